"""Phase (d) of the GPU check: batch-1 decode speed of Llama 3.1 8B's shape (dummy bf16 weights,
CUDA graphs on) against the HBM bound.

Decoding one token reads every weight once (the untied embedding table excepted: one row), so
the bound is the measured copy bandwidth over those bytes. The decode rate is 256 tokens over
the time a 257-token generation takes beyond a 1-token one on the same 128-token prompt, so
prefill and start-up are left out.
"""

from __future__ import annotations

import time
import traceback

import suite_helpers
import torch
from bandwidth import copy_bandwidth
from report import PhaseReport, Timer

from pagedllm import LLM, SamplingParams

SHAPE = "llama-3.1-8b"
PROMPT_LEN, NEW_TOKENS = 128, 256


def weight_bytes_per_token(config, itemsize: int) -> int:
    """Bytes of weights one decode step of a Llama-shaped model reads: every projection, norm
    and the LM head; of the embedding table only a row, unless the LM head is that table."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * config.intermediate_size + 2 * hidden
    return (layers * per_layer + config.vocab_size * hidden + hidden) * itemsize


def seconds_to_generate(llm: LLM, prompt: list[int], max_tokens: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    report = PhaseReport("decode")
    try:
        with Timer() as t:
            bandwidth = copy_bandwidth()
        report.row("HBM copy bandwidth", True, f"{bandwidth / 1e12:.2f} TB/s (read + written)", t.seconds)
        with Timer() as t:
            llm = LLM(
                SHAPE,
                load_format="dummy",
                tokenizer=str(suite_helpers.tiny_tokenizer_folder()),
                dtype="bfloat16",
                device="cuda",
                max_model_len=1024,
                max_num_seqs=1,
                enable_prefix_caching=False,  # every run prefills the whole prompt
            )
        graphs = getattr(llm.engine.engine_core.executor.runner.compiled_step, "name", "off")
        report.row(f"{SHAPE} start-up", True, f"dummy bf16 weights, step compiler {graphs}", t.seconds)
        per_token = weight_bytes_per_token(llm.engine.model_config.hf_config, 2)  # bf16
        bound = bandwidth / per_token
        prompt = torch.randint(
            1000, 128000, (PROMPT_LEN,), generator=torch.Generator().manual_seed(0)
        ).tolist()
        with Timer() as t:
            seconds_to_generate(llm, prompt, 16)  # warm-up
            first = min(seconds_to_generate(llm, prompt, 1) for _ in range(2))
            whole = min(seconds_to_generate(llm, prompt, NEW_TOKENS + 1) for _ in range(2))
        rate = NEW_TOKENS / (whole - first)
        figure = (
            f"{rate:.1f} tok/s = {rate / bound:.0%} of the HBM bound {bound:.1f} tok/s "
            f"({per_token / 1e9:.2f} GB per token at {bandwidth / 1e12:.2f} TB/s); "
            f"TPOT {1e3 / rate:.2f} ms, {PROMPT_LEN}-token prefill + 1 token {first * 1e3:.0f} ms"
        )
        report.row("batch-1 decode", True, figure, t.seconds)
        report.headline(f"{rate:.1f} tok/s, {rate / bound:.0%} of the HBM bound ({bound:.1f})")
    except Exception as error:
        traceback.print_exc()
        report.row(f"{SHAPE} decode", False, f"{type(error).__name__}: {error}", 0.0)
        report.headline(f"{type(error).__name__}: {error}", ok=False)


if __name__ == "__main__":
    main()

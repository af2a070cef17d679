"""Phase (c) of the GPU check: greedy parity with transformers on the GPU, one row per
architecture, for tiny random models built here (no downloads).

Per model: four prompts (5 to 48 tokens) in one batch with chunked prefill (16-token budget),
16 greedy tokens each, float32; transformers runs the same weights on the GPU one prompt at a
time. A row passes when tokens match (near-ties aside, tests/numerics.py) and sampled and
prompt logprobs agree to 1e-3.
"""

from __future__ import annotations

import gc
import tempfile
import traceback
from pathlib import Path

import suite_helpers  # noqa: F401  (puts tests/ on sys.path)
import torch
from report import PhaseReport, Timer
from transformers import AutoModelForCausalLM

import tiny_models
from hf_reference import hf_greedy, hf_prompt_logprobs
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 16
PROMPT_LENS = [5, 17, 33, 48]
TOLERANCE = 1e-3
# Most telling first, in case the phase's time runs out: Llama, then the mixed sliding/global
# Gemma 3, Qwen3's q/k norms and head size 40, Phi-3's fused projections and window, GPT-2's
# learned positions and LayerNorm, Mixtral's experts.
ARCHITECTURES = {
    "llama": (tiny_models.llama_config, 0),
    "gemma3": (tiny_models.gemma3_config, 5),
    "qwen3": (tiny_models.qwen3_config, 3),
    "phi3": (tiny_models.phi3_config, 4),
    "gpt2": (tiny_models.gpt2_config, 6),
    "mixtral": (tiny_models.mixtral_config, 7),
}


def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def compare(folder: Path, block_size: int) -> tuple[bool, str]:
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to("cuda").eval()
    batch = prompts()
    greedy = [hf_greedy(reference, p, NUM_TOKENS) for p in batch]
    prompt_logprobs = [hf_prompt_logprobs(reference, p) for p in batch]
    del reference
    llm = LLM(
        str(folder),
        device="cuda",
        dtype="float32",
        max_num_batched_tokens=16,
        max_num_seqs=8,
        num_kv_blocks=160,
        block_size=block_size,
    )
    params = SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in batch], params)
    matched, worst, worst_prompt, problems = 0, 0.0, 0.0, []
    for prompt, output, (ref_tokens, ref_top2, ref_chosen), ref_prompt in zip(
        batch, outputs, greedy, prompt_logprobs
    ):
        completion = output.outputs[0]
        tokens = completion.token_ids
        agree = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(ref_tokens))
        matched += agree
        try:
            assert_greedy_match(tokens, ref_tokens, ref_top2)
        except AssertionError as error:
            problems.append(str(error))
        chosen = [lp[t].logprob for t, lp in zip(tokens, completion.logprobs)]
        worst = max([worst] + [abs(a - b) for a, b in zip(chosen[:agree], ref_chosen[:agree])])
        ours = [lp[t].logprob for t, lp in zip(prompt[1:], output.prompt_logprobs[1:])]
        worst_prompt = max([worst_prompt] + [abs(a - b) for a, b in zip(ours, ref_prompt)])
    ok = not problems and worst < TOLERANCE and worst_prompt < TOLERANCE
    figure = (
        f"{matched}/{NUM_TOKENS * len(batch)} tokens as transformers, max |dlogprob| {worst:.1e}, "
        f"prompt {worst_prompt:.1e}"
    )
    if problems:
        figure += f"; {problems[0]}"
    return ok, figure


def main() -> None:
    report = PhaseReport("parity")
    root = Path(tempfile.mkdtemp(prefix="gpu-check-parity-"))
    for kind, (config, seed) in ARCHITECTURES.items():
        with Timer() as t:
            try:
                folder = tiny_models.save_tiny(config(), root / kind, seed=seed)
                ok, figure = compare(folder, block_size=4 if kind == "gemma3" else 8)
            except Exception as error:
                traceback.print_exc()
                ok, figure = False, f"{type(error).__name__}: {error}"
            gc.collect()
            torch.cuda.empty_cache()
        report.row(kind, ok, figure, t.seconds)
    passed = len(ARCHITECTURES) - report.failures
    report.headline(f"{passed}/{len(ARCHITECTURES)} architectures equal transformers (float32)")


if __name__ == "__main__":
    main()

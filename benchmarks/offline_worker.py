"""One engine's offline runs for `compare.py`, in a process of its own.

    python offline_worker.py SPEC.json OUT.json

Run with pagedllm's interpreter (engines `pagedllm`, `transformers`) or with the vLLM venv's
(engine `vllm`): it imports only the engine it drives, and nothing from pagedllm at the top,
since the vLLM venv does not have pagedllm. SPEC.json holds:

    engine        pagedllm | transformers | vllm
    model         what the engine loads (alias, GGUF or Hugging Face folder)
    dtype         bfloat16
    throughput    {prompts: [[ids]], output_len} or null: workload (a)
    single        {prompts: [[ids]], output_len} or null: workload (b); one prompt per
                  repetition, each distinct so that no run hits the prefix cache
    engine_args   pagedllm only: extra CLI flags (e.g. ["--quantization", "int8"])
    config_overrides  pagedllm only: EngineConfig fields set after parsing those flags

OUT.json gets {"throughput": {...}, "single": {...}} with what was run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# generate(prompts, max_tokens, sample) -> output tokens produced; `sample` False means greedy.
Generate = Callable[[list[list[int]], int, bool], int]


def measure_throughput(generate: Generate, prompts: list[list[int]], output_len: int) -> dict:
    """Workload (a): every prompt at once, sampling at temperature 1, as `bench throughput` does."""
    # Warm-up, like `pagedllm bench throughput`: the first prompts reversed, so that no timed
    # prompt finds its prefix cached by it.
    generate([p[::-1] for p in prompts[: min(4, len(prompts))]], 4, True)
    start = time.perf_counter()
    output_tokens = generate(prompts, output_len, True)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "elapsed_s": elapsed,
        "requests_per_s": len(prompts) / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
    }


def measure_single(generate: Generate, prompts: list[list[int]], output_len: int) -> dict:
    """Workload (b): one request at a time, greedy.

    TTFT is the time of a whole request for one token; the decode rate is the remaining
    `output_len - 1` tokens over the rest of a full request's time. Medians over the
    repetitions; prompts[0] warms up, then each repetition uses two fresh prompts.
    """
    generate(prompts[:1], 8, False)
    ttfts, totals = [], []
    for first, full in zip(prompts[1::2], prompts[2::2]):
        start = time.perf_counter()
        generate([first], 1, False)
        ttfts.append(time.perf_counter() - start)
        start = time.perf_counter()
        produced = generate([full], output_len, False)
        totals.append(time.perf_counter() - start)
        if produced != output_len:
            raise RuntimeError(f"asked for {output_len} tokens, got {produced}")
    ttft, total = statistics.median(ttfts), statistics.median(totals)
    return {
        "repetitions": len(totals),
        "prompt_len": len(prompts[0]),
        "output_len": output_len,
        "ttft_ms": ttft * 1000,
        "e2e_ms": total * 1000,
        "decode_tokens_per_s": (output_len - 1) / max(total - ttft, 1e-9),
        "tokens_per_s": output_len / total,
    }


# --- engines --------------------------------------------------------------------------------


def pagedllm_generate(spec: dict) -> Generate:
    import argparse
    import dataclasses

    try:
        from pagedllm.engine.arg_utils import add_engine_args, engine_config_from_args
    except ImportError:  # a checkout from before the module moved (ab.py runs older commits)
        from pagedllm.entrypoints.engine_args import add_engine_args, engine_config_from_args
    from pagedllm.entrypoints.llm import LLM
    from pagedllm.sampling_params import SamplingParams

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(
        ["--model", spec["model"], "--dtype", spec["dtype"], *spec.get("engine_args", [])]
    )
    config = dataclasses.replace(engine_config_from_args(args), **spec.get("config_overrides", {}))
    llm = LLM.from_engine_config(config)

    def generate(prompts: list[list[int]], max_tokens: int, sample: bool) -> int:
        params = SamplingParams(temperature=1.0 if sample else 0.0, max_tokens=max_tokens, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    return generate


def vllm_generate(spec: dict) -> Generate:
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_model_len=spec.get("max_model_len", 2048), seed=0)

    def generate(prompts: list[list[int]], max_tokens: int, sample: bool) -> int:
        params = SamplingParams(
            temperature=1.0 if sample else 0.0, top_p=1.0, max_tokens=max_tokens, ignore_eos=True
        )
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    return generate


def transformers_generate(spec: dict) -> Generate:
    import torch

    model = _load_transformers(spec["model"], getattr(torch, spec["dtype"]))

    def generate(prompts: list[list[int]], max_tokens: int, sample: bool) -> int:
        ids = torch.tensor(prompts)  # equal lengths: no padding needed
        kwargs = {"do_sample": True, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                **kwargs,
            )
        return (out.shape[1] - ids.shape[1]) * ids.shape[0]

    return generate


def _load_transformers(model: str, dtype):
    from transformers import AutoModelForCausalLM

    path = Path(model)
    if path.suffix == ".gguf":
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return loaded.eval()


ENGINES: dict[str, Callable[[dict], Generate]] = {
    "pagedllm": pagedllm_generate,
    "vllm": vllm_generate,
    "transformers": transformers_generate,
}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_path = Path(sys.argv[2])
    results: dict = {}
    start = time.perf_counter()
    generate = ENGINES[spec["engine"]](spec)
    results["load_s"] = time.perf_counter() - start
    for name, measure in (("throughput", measure_throughput), ("single", measure_single)):
        work = spec.get(name)
        if work:
            results[name] = measure(generate, work["prompts"], work["output_len"])
            print(f"[{spec['engine']}] {name}: {json.dumps(results[name])}", flush=True)
            out_path.write_text(json.dumps(results, indent=2))  # keep what is done if a later run dies
    out_path.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

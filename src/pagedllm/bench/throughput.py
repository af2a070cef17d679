"""`pagedllm bench throughput`: offline throughput on random token-id prompts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from pagedllm.engine.arg_utils import engine_config_from_args
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_outputs_params import StructuredOutputsParams


def add_throughput_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--output-json", default=None, help="write the results here as JSON")
    parser.add_argument(
        "--structured-outputs",
        choices=["none", "json"],
        default="none",
        help="json: every request under a JSON schema (an object with one string that never ends "
        "before --output-len), to measure what constrained decoding costs per token",
    )


# Long enough that no request's string closes before --output-len: every step is masked.
BENCH_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 100000}},
    "required": ["text"],
}


def random_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int) -> list[dict]:
    """Token-id prompts drawn uniformly, avoiding the first ids where special tokens usually sit."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    ids = rng.integers(low, vocab_size, size=(num_prompts, input_len))
    return [{"prompt_token_ids": row.tolist()} for row in ids]


def run_throughput_benchmark(args: argparse.Namespace) -> dict:
    from pagedllm.engine.llm_engine import LLMEngine

    engine = LLMEngine(engine_config_from_args(args))
    prompts = random_prompts(args.num_prompts, args.input_len, engine.model_config.vocab_size, args.seed)
    constraint = None
    if args.structured_outputs == "json":
        constraint = StructuredOutputsParams(json=BENCH_SCHEMA)
    params = SamplingParams(
        temperature=1.0,
        top_p=1.0,
        max_tokens=args.output_len,
        ignore_eos=True,
        structured_outputs=constraint,
    )
    # The first prompts reversed: the same lengths and ids, but no prefix in common with the
    # timed prompts, so that the timed run does not find them in the prefix cache. Also
    # compiles the benchmark's grammar, if any, before the clock starts.
    warmup = [{"prompt_token_ids": p["prompt_token_ids"][::-1]} for p in prompts[: min(4, len(prompts))]]
    engine.run_to_completion(warmup, [dataclasses.replace(params, max_tokens=4)] * len(warmup))
    kv_cache_manager = engine.engine_core.scheduler.kv_cache_manager
    hits_before = kv_cache_manager.prefix_cache_hits
    start = time.perf_counter()
    outputs = engine.run_to_completion(prompts, [params] * len(prompts))
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    output_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    result = {
        "model": engine.config.model,
        "dtype": engine.info.dtype,
        "device": engine.info.device,
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "elapsed_s": elapsed,
        "requests_per_s": len(outputs) / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
        "total_tokens_per_s": (prompt_tokens + output_tokens) / elapsed,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "num_preemptions": engine.engine_core.scheduler.num_preemptions,
        "prefix_cache_hit_tokens": kv_cache_manager.prefix_cache_hits - hits_before,
        "structured_outputs": args.structured_outputs,
    }
    print(
        f"Throughput: {result['requests_per_s']:.2f} requests/s, "
        f"{result['output_tokens_per_s']:.1f} output tokens/s, "
        f"{result['total_tokens_per_s']:.1f} total tokens/s "
        f"({len(outputs)} requests, {prompt_tokens} prompt + {output_tokens} output tokens in {elapsed:.1f} s)"
    )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result

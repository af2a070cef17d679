"""Offline throughput: `pagedllm bench throughput` vs `transformers.generate`, one run, same workload.

Workload (a) of DESIGN.md: N requests x input-len random token ids x output-len tokens, ignore_eos.
Usage: python benchmarks/vs_transformers.py [--num-prompts 128 --input-len 128 --output-len 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def run_pagedllm(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "pagedllm.entrypoints.cli",
            "bench",
            "throughput",
            "--model",
            args.model,
            "--dtype",
            args.dtype,
            "--num-prompts",
            str(args.num_prompts),
            "--input-len",
            str(args.input_len),
            "--output-len",
            str(args.output_len),
            "--output-json",
            out,
        ] + args.pagedllm_args.split()
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


def run_transformers(args) -> dict:
    from transformers import AutoModelForCausalLM

    from pagedllm.bench.throughput import random_prompts
    from pagedllm.model.loader.resolve import resolve_model

    resolved = resolve_model(args.model)
    kwargs = {"dtype": getattr(torch, args.dtype)}
    if resolved.format == "gguf":
        model = AutoModelForCausalLM.from_pretrained(
            str(resolved.path.parent), gguf_file=resolved.path.name, **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    model.eval()
    prompts = random_prompts(args.num_prompts, args.input_len, model.config.vocab_size, 0)
    ids = torch.tensor([p["prompt_token_ids"] for p in prompts])
    gen = dict(
        max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=True, top_k=0, top_p=1.0
    )
    with torch.inference_mode():
        model.generate(ids[:2], attention_mask=torch.ones_like(ids[:2]), max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        output_tokens = 0
        for i in range(0, len(ids), args.hf_batch_size):
            batch = ids[i : i + args.hf_batch_size]
            out = model.generate(batch, attention_mask=torch.ones_like(batch), **gen)
            output_tokens += (out.shape[1] - batch.shape[1]) * batch.shape[0]
        elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
        "total_tokens_per_s": (output_tokens + ids.numel()) / elapsed,
        "requests_per_s": len(ids) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-batch-size", type=int, default=128)
    parser.add_argument("--pagedllm-args", default="", help="extra flags for pagedllm bench throughput")
    args = parser.parse_args()
    ours = run_pagedllm(args)
    ref = run_transformers(args)
    print()
    print(f"{'engine':<14}{'req/s':>10}{'output tok/s':>15}{'total tok/s':>14}")
    for name, r in (("pagedllm", ours), ("transformers", ref)):
        print(
            f"{name:<14}{r['requests_per_s']:>10.2f}{r['output_tokens_per_s']:>15.1f}{r['total_tokens_per_s']:>14.1f}"
        )
    print(f"ratio (output tok/s): {ours['output_tokens_per_s'] / ref['output_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()

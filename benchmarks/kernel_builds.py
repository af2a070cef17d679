"""The CPU kernels' two builds end to end: this CPU's own (native) against the AVX2 one.

    python benchmarks/kernel_builds.py [--rounds 3] [--quantizations none,int8,int4]
                                       [--builds native,avx2] [--output-json F]

Each run is a fresh process (offline_worker.py, as compare.py runs pagedllm) with
`PAGEDLLM_CPU_ISA` set to the build, SmolLM2 in bf16 with each weight format:

  (a) offline: 32 requests x 128 random prompt tokens -> 64 tokens, all at once, temperature 1:
      output tokens/s (prefill through the packed GEMM and attention, then batched decode);
  (b) single stream: a 64-token prompt -> 128 tokens, greedy: decode tokens/s (median of 3).

Runs alternate build by build inside each round (native, avx2, native, avx2, ...), so both see
the same machine; the table gives per cell the median over rounds and the min-max, and the
ratio avx2 / native of the medians. On an AVX-512 CPU the AVX2 build shows what a CPU without
AVX-512 runs, at this CPU's clock and memory: a bound on the code, not a figure for such a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (a sibling script: the worker runner and prompt drawing)

MODEL = "smollm2-135m-instruct"
VOCAB = 49152
OFFLINE = (32, 128, 64)  # requests, prompt tokens, output tokens
SINGLE = (64, 128, 3)  # prompt tokens, output tokens, repetitions


def spec_for(quantization: str) -> dict:
    requests, prompt_len, output_len = OFFLINE
    single_prompt, single_output, reps = SINGLE
    spec = {
        "engine": "pagedllm",
        "model": MODEL,
        "dtype": "bfloat16",
        "throughput": {"prompts": compare.prompts(requests, prompt_len, 0, VOCAB), "output_len": output_len},
        "single": {
            "prompts": compare.prompts(1 + 2 * reps, single_prompt, 100, VOCAB),
            "output_len": single_output,
        },
        "engine_args": [] if quantization == "none" else ["--quantization", quantization],
    }
    if quantization != "none":
        spec["quantization"] = quantization
    return spec


def run_once(build: str, quantization: str, workdir: Path) -> dict:
    env = dict(os.environ, PAGEDLLM_CPU_ISA=build)
    result = compare.run_worker(sys.executable, spec_for(quantization), workdir, env=env)
    if "error" in result:
        raise RuntimeError(f"{build} {quantization}: {result['error']} (logs in {workdir})")
    return {
        "offline_output_tok_s": result["throughput"]["output_tokens_per_s"],
        "single_decode_tok_s": result["single"]["decode_tokens_per_s"],
    }


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantizations", default="none,int8,int4")
    parser.add_argument("--builds", default="native,avx2")
    parser.add_argument("--output-json")
    args = parser.parse_args(argv)
    builds, quantizations = args.builds.split(","), args.quantizations.split(",")
    results: dict = {q: {b: [] for b in builds} for q in quantizations}
    with tempfile.TemporaryDirectory(prefix="kernel-builds-") as tmp:
        workdir = Path(tmp)
        for build in builds:  # untimed: builds each library and fills the model cache
            run_once(build, quantizations[0], workdir)
        for r in range(args.rounds):
            for q in quantizations:
                for build in builds:
                    results[q][build].append(run_once(build, q, workdir))
                    print(f"round {r + 1} {q} {build}: {results[q][build][-1]}", flush=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    print(f"\nCPU: {cpu}, {os.cpu_count()} cores; median (min-max) over {args.rounds} rounds\n")
    metrics = ("offline_output_tok_s", "single_decode_tok_s")
    print("| weights | metric | " + " | ".join(builds) + (" | avx2 / native |" if len(builds) == 2 else " |"))
    print("|---" * (3 + len(builds)) + "|")
    for q in quantizations:
        for metric in metrics:
            series = [[run[metric] for run in results[q][b]] for b in builds]
            ratio = statistics.median(series[-1]) / statistics.median(series[0]) if len(builds) == 2 else None
            cells = " | ".join(cell(s) for s in series)
            print(f"| {q} | {metric} | {cells} |" + (f" {ratio:.2f} |" if ratio else ""))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"cpu": cpu, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data parallelism on one machine: `pagedllm serve` with --data-parallel-size 1 against N.

Each run starts a fresh server, waits for /health, drives it with `pagedllm bench serve`
(random token-id prompts, ignore_eos), and stops it. Runs alternate between the configurations
(A B A B ...), so drift in the machine's speed falls on both alike; medians and ranges over the
repetitions are printed, and the raw results written with --output-json.

    python benchmarks/data_parallel.py --sizes 1 2 --repetitions 3

On a CPU, replicas split the cores between them (each replica process takes an even share),
so the question is whether two half-size engines serve more than one full-size engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import cpu_model  # noqa: E402
from processes import Server, free_port  # noqa: E402

FIGURES = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "request_throughput")


def run_once(args, dp: int, workdir: Path, rep: int) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", args.model, "--port", str(port)]
    command += ["--dtype", args.dtype, "--data-parallel-size", str(dp), *args.serve_args]
    log = workdir / f"dp{dp}-{rep}.log"
    with Server(f"dp{dp}", command, port, log) as server:
        server.wait_healthy(600)
        out = workdir / f"dp{dp}-{rep}.json"
        bench = [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "serve"]
        bench += ["--base-url", server.base_url, "--num-prompts", str(args.num_prompts)]
        bench += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
        bench += ["--max-concurrency", str(args.concurrency), "--seed", str(rep), "--output-json", str(out)]
        subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
    result["startup_s"] = server.startup_s
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2], help="data-parallel sizes to compare")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="more `serve` flags")
    parser.add_argument("--output-json", type=Path, default=None)
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_model()}")
    results: dict[int, list[dict]] = {dp: [] for dp in args.sizes}
    with tempfile.TemporaryDirectory(prefix="pagedllm-dp-") as tmp:
        for rep in range(args.repetitions):
            for dp in args.sizes:
                result = run_once(args, dp, Path(tmp), rep)
                results[dp].append(result)
                print(
                    f"rep {rep} dp={dp}: "
                    + ", ".join(f"{k} {result[k]:.1f}" for k in FIGURES)
                    + f", failed {result.get('failed', 0)}",
                    flush=True,
                )
    print()
    print("| data-parallel size | " + " | ".join(FIGURES) + " |")
    print("| --- |" + " ---: |" * len(FIGURES))
    for dp, runs in results.items():
        cells = []
        for key in FIGURES:
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {dp} | " + " | ".join(cells) + " |")
    if args.output_json:
        args.output_json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

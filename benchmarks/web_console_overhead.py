"""What an open web console costs the serving path: `bench serve` alone against `bench serve`
while a client polls GET /engine/snapshot the way the page's engine tab does.

One `pagedllm serve` (started here, on a free 127.0.0.1 port) serves every run. After an
untimed warm-up, runs alternate A B A B ... (`--repetitions` pairs), so drift in the machine's
speed falls on both alike:

- A: `pagedllm bench serve` at `--concurrency` alone;
- B: the same while a thread polls `GET /engine/snapshot?history_since=T` at `--poll-hz`
  (httpx, one keep-alive connection, T = the newest history sample it has, as the page does).

Each run has its own prompts (its own seed), so none hits a prefix cache filled by another.
Printed: each run's output tok/s, median TTFT and TPOT, the medians per variant and the ratio
B/A, the CPU, and the mean latency and body size of the poller's snapshots.

    python benchmarks/web_console_overhead.py                      # 3 pairs, ~5 min on 2 cores
    python benchmarks/web_console_overhead.py --repetitions 5 --poll-hz 20
    python benchmarks/web_console_overhead.py --serve-args --num-kv-blocks 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import cpu_model  # noqa: E402  (the /proc/cpuinfo model, family and CPU count)
from processes import Server, free_port  # noqa: E402

FIGURES = ("output_throughput", "median_ttft_ms", "median_tpot_ms")
LABELS = {
    "output_throughput": "output tok/s",
    "median_ttft_ms": "median TTFT ms",
    "median_tpot_ms": "median TPOT ms",
}


class SnapshotPoller(threading.Thread):
    """GET /engine/snapshot every 1/hz s (from the start of one call to the next, as the page's
    timer does), with history_since set to the newest sample seen."""

    def __init__(self, base_url: str, hz: float, api_key: str | None):
        super().__init__(daemon=True)
        self.base_url, self.period = base_url, 1.0 / hz
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stopping = threading.Event()
        self.latencies_s: list[float] = []
        self.sizes: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        since = None
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
            next_at = time.perf_counter()
            while not self.stopping.is_set():
                params = {"history_since": since} if since is not None else {}
                start = time.perf_counter()
                try:
                    response = client.get("/engine/snapshot", params=params)
                    elapsed = time.perf_counter() - start
                    response.raise_for_status()
                    body = response.json()
                except (httpx.HTTPError, ValueError) as error:
                    self.errors.append(repr(error))
                else:
                    self.latencies_s.append(elapsed)
                    self.sizes.append(len(response.content))
                    samples = body.get("history", {}).get("samples", [])
                    if samples:
                        since = samples[-1]["time"]
                next_at += self.period
                self.stopping.wait(max(0.0, next_at - time.perf_counter()))
                next_at = max(next_at, time.perf_counter() - self.period)  # no burst after a slow call

    def stop(self) -> dict:
        self.stopping.set()
        self.join(60)
        n = len(self.latencies_s)
        return {
            "polls": n,
            "poll_errors": len(self.errors),
            "mean_snapshot_ms": 1000 * statistics.fmean(self.latencies_s) if n else float("nan"),
            "max_snapshot_ms": 1000 * max(self.latencies_s) if n else float("nan"),
            "mean_snapshot_bytes": statistics.fmean(self.sizes) if n else float("nan"),
        }


def bench(args, base_url: str, out: Path, seed: int, num_prompts: int) -> dict:
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "serve", "--base-url", base_url]
    command += ["--num-prompts", str(num_prompts), "--input-len", str(args.input_len)]
    command += ["--output-len", str(args.output_len), "--max-concurrency", str(args.concurrency)]
    command += ["--seed", str(seed), "--output-json", str(out)]
    if args.api_key:
        command += ["--api-key", args.api_key]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_once(args, base_url: str, workdir: Path, variant: str, rep: int) -> dict:
    seed = 1000 + 2 * rep + (variant == "B")
    poller = SnapshotPoller(base_url, args.poll_hz, args.api_key) if variant == "B" else None
    if poller:
        poller.start()
    try:
        result = bench(args, base_url, workdir / f"{variant}{rep}.json", seed, args.num_prompts)
    finally:
        polled = poller.stop() if poller else {}
    return result | polled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repetitions", type=int, default=3, help="A B pairs")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll-hz", type=float, default=10.0, help="snapshot polls per second in B")
    parser.add_argument("--api-key", default=None, help="start the server with --api-key and send it")
    parser.add_argument("--output-json", type=Path, default=None)
    parser.add_argument(
        "--serve-args", nargs=argparse.REMAINDER, default=[], help="more `serve` flags (last)"
    )
    args = parser.parse_args(argv)

    print(f"CPU: {cpu_model()}", flush=True)
    port = free_port()
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", args.model, "--port", str(port)]
    command += [
        "--dtype",
        args.dtype,
        *(["--api-key", args.api_key] if args.api_key else []),
        *args.serve_args,
    ]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pagedllm-console-") as tmp:
        workdir = Path(tmp)
        with Server("pagedllm", command, port, workdir / "server.log") as server:
            server.wait_healthy(600)
            print(f"server up in {server.startup_s:.1f} s; warm-up ...", flush=True)
            bench(args, server.base_url, workdir / "warmup.json", 1, max(args.concurrency, 8))
            # One snapshot call untimed too (the first one builds what later ones reuse).
            httpx.get(
                f"{server.base_url}/engine/snapshot",
                headers={"Authorization": f"Bearer {args.api_key}"} if args.api_key else {},
                timeout=30,
            ).raise_for_status()
            for rep in range(args.repetitions):
                for variant in ("A", "B"):
                    result = run_once(args, server.base_url, workdir, variant, rep) | {
                        "variant": variant,
                        "rep": rep,
                    }
                    runs.append(result)
                    line = f"rep {rep} {variant}: " + ", ".join(
                        f"{LABELS[k]} {result[k]:.1f}" for k in FIGURES
                    )
                    if variant == "B":
                        line += (
                            f", {result['polls']} polls, snapshot {result['mean_snapshot_ms']:.1f} ms mean"
                            f" ({result['max_snapshot_ms']:.1f} max), {result['mean_snapshot_bytes'] / 1024:.1f} KiB"
                        )
                        if result["poll_errors"]:
                            line += f", {result['poll_errors']} poll errors"
                    if result.get("failed"):
                        line += f", {result['failed']} failed requests"
                    print(line, flush=True)

    print()
    print(f"A: bench serve alone; B: the same with GET /engine/snapshot polled at {args.poll_hz:g} Hz")
    print(
        f"{args.num_prompts} prompts x {args.input_len} tokens -> {args.output_len} tokens, "
        f"concurrency {args.concurrency}, {args.model} {args.dtype}"
    )
    print()
    print(
        "| run | variant | "
        + " | ".join(LABELS[k] for k in FIGURES)
        + " | snapshot ms (mean) | snapshot KiB |"
    )
    print("| --- | --- |" + " ---: |" * (len(FIGURES) + 2))
    for r in runs:
        cells = [f"{r[k]:.1f}" for k in FIGURES]
        if r["variant"] == "B":
            cells += [f"{r['mean_snapshot_ms']:.1f}", f"{r['mean_snapshot_bytes'] / 1024:.1f}"]
        else:
            cells += ["", ""]
        print(f"| {r['rep']} | {r['variant']} | " + " | ".join(cells) + " |")
    medians = {
        v: {k: statistics.median(r[k] for r in runs if r["variant"] == v) for k in FIGURES}
        for v in ("A", "B")
    }
    for v in ("A", "B"):
        print(f"| median | {v} | " + " | ".join(f"{medians[v][k]:.1f}" for k in FIGURES) + " | | |")
    ratios = [medians["B"][k] / medians["A"][k] if medians["A"][k] else float("nan") for k in FIGURES]
    print("| ratio | B/A | " + " | ".join(f"{x:.3f}" for x in ratios) + " | | |")
    b_runs = [r for r in runs if r["variant"] == "B"]
    polls = sum(r["polls"] for r in b_runs)
    mean_ms = sum(r["mean_snapshot_ms"] * r["polls"] for r in b_runs) / polls if polls else float("nan")
    mean_kib = (
        sum(r["mean_snapshot_bytes"] * r["polls"] for r in b_runs) / polls / 1024 if polls else float("nan")
    )
    print()
    print(f"CPU: {cpu_model()}")
    print(f"snapshot poller: {polls} polls, mean latency {mean_ms:.1f} ms, mean size {mean_kib:.1f} KiB")
    print("(output tok/s: higher is better; TTFT and TPOT: lower is better)")
    if args.output_json:
        args.output_json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What tensor parallelism costs per engine step on this CPU: TP=2 against TP=1, offline.

Usage: python benchmarks/tp_overhead.py [--reps 5] [--variants tp1,tp1-layers,tp2]
                                        [--model smol-tp] [--batches 1,16,32] [--prompt-len 512]

Each run is a fresh process (an `LLM` with dummy bf16 weights) that times, one `engine.step()`
at a time: the prefill step of one `--prompt-len` prompt (a fresh random prompt each time,
prefix caching off, the first dropped as warm-up) and decode-only steps at each `--batches`
size (`--context`-token prompts, `--decode-steps` steps). Runs are interleaved (tp1, tp1-layers,
tp2, tp1, ...) so that a busy spell of the shared machine falls on every variant; the table
gives per variant the median over the runs of each run's median step, its min-max over the
runs, and the median of the per-repetition ratios TP=2 / TP=1.

Variants: `tp1` is the default engine (the CPU step compiler runs the decoder layers as one C++
op); `tp1-layers` is TP=1 through the Python layers, the path TP=2 takes (the step compiler
takes one rank only), so tp2 / tp1-layers isolates what the second rank adds; `tp2` is
`tensor_parallel_size=2`; `tp2-ray` is the same with both ranks as Ray actors
(`--distributed-executor-backend ray`, on the cluster at `--ray-address`). On a 2-core machine each of 2 ranks gets one thread, so TP=2 here
measures the overhead of splitting (collectives, duplicated per-step work, the broadcast),
not a speed-up.

In TP=2 runs rank 0's collectives are wrapped (a few microseconds per step) to count what
crosses the wire per step: the pickled size of the broadcast command, the number and bytes of
all-reduces and all-gathers, and the time rank 0 spends in each (including waiting for rank 1
to reach the same collective). A probe then times one all-reduce alone, as the engine sets up its
group, at each step's [T, hidden] size, next to a TCP round trip of the same bytes (the wire alone).

`--model smol-tp` (default) is a SmolLM2-135M-sized Llama whose heads split in two (hidden 576,
8 heads of 64, 4 KV heads, 30 layers, vocabulary 49152, tied embeddings; SmolLM2's own 9 heads
do not divide by 2), written to a temporary folder; any `--load-format dummy` model works
(`llama-3.2-1b`, a config.json path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {  # name -> (tensor_parallel_size, step compiler, executor backend)
    "tp1": (1, True, "mp"),
    "tp1-layers": (1, False, "mp"),
    "tp2": (2, False, "mp"),
    # Both ranks as Ray actors (needs --ray-address): what the actor calls add per step.
    "tp2-ray": (2, False, "ray"),
}
SMOL_TP_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "num_attention_heads": 8,
    "head_dim": 64,
    "num_hidden_layers": 30,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}
WIRE_FIELDS = (
    "broadcast_bytes",
    "broadcast_ms",
    "all_reduce_calls",
    "all_reduce_bytes",
    "all_reduce_ms",
    "all_gather_calls",
    "all_gather_bytes",
    "all_gather_ms",
)
RESULT_MARK = "TP_OVERHEAD_RESULT "


# ---- one run (a child process) -------------------------------------------------------------------


class WireMeter:
    """Counts rank 0's collectives and the broadcast payload, per step."""

    def __init__(self):
        self.step: dict[str, float] = dict.fromkeys(WIRE_FIELDS, 0)

    def reset(self) -> None:
        self.step = dict.fromkeys(WIRE_FIELDS, 0)

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        from pagedllm.worker import mp_executor

        meter = self

        class SizedPickler(c10d._pickler):
            # broadcast_object_list pickles into a BytesIO through this class: its size is the payload.
            def __init__(self, file, *args, **kwargs):
                super().__init__(file, *args, **kwargs)
                self._sized_file = file

            def dump(self, obj):
                super().dump(obj)
                meter.step["broadcast_bytes"] += self._sized_file.tell()

        c10d._pickler = SizedPickler
        mp_executor.broadcast_command = self._timed(mp_executor.broadcast_command, "broadcast", None)
        dist.all_reduce = self._timed(dist.all_reduce, "all_reduce", lambda t: t.numel() * t.element_size())
        # The gathered size: every rank ends up with all slices.
        dist.all_gather = self._timed(
            dist.all_gather, "all_gather", lambda pieces: sum(p.numel() * p.element_size() for p in pieces)
        )

    def _timed(self, function, name: str, size_of):
        step = self

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                step.step[f"{name}_ms"] += (time.perf_counter() - start) * 1e3
                if size_of is not None:
                    step.step[f"{name}_calls"] += 1
                    step.step[f"{name}_bytes"] += size_of(args[0])

        return wrapper


def timed_step(engine, meter: WireMeter | None) -> tuple[float, dict | None]:
    """One engine step: its wall time in ms and what crossed the wire during it."""
    if meter is not None:
        meter.reset()
    start = time.perf_counter()
    engine.step()
    ms = (time.perf_counter() - start) * 1e3
    return ms, (dict(meter.step) if meter is not None else None)


def request_id() -> str:
    # Server-style ids (cmpl-<32 hex>), so the broadcast's pickled size is what serving sends.
    return f"cmpl-{uuid.uuid4().hex}"


def time_prefills(engine, args, vocab: int, meter) -> list[tuple[float, dict | None]]:
    """Prefill steps of fresh random prompts; each request ends after its one sampled token."""
    from pagedllm import SamplingParams
    from pagedllm.bench.throughput import random_prompts

    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    steps = []
    for prompt in random_prompts(args.prefill_reps + 1, args.prompt_len, vocab, seed=1):
        engine.add_request(request_id(), prompt, params)
        steps.append(timed_step(engine, meter))
        if engine.has_unfinished_requests():
            raise RuntimeError("the prompt did not prefill in one step: raise --max-num-batched-tokens")
    return steps[1:]  # the first step of this shape warms up


def time_decodes(engine, args, batch: int, vocab: int, meter) -> list[tuple[float, dict | None]]:
    """Decode-only steps of `batch` requests, once all of them are prefilled (then aborted)."""
    from pagedllm import SamplingParams
    from pagedllm.bench.throughput import random_prompts

    warmup = 2
    # Slack: a request prefilled in an earlier step of a large batch samples while the rest prefill.
    max_tokens = 1 + warmup + args.decode_steps + batch * args.context // args.max_num_batched_tokens
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [request_id() for _ in range(batch)]
    for rid, prompt in zip(ids, random_prompts(batch, args.context, vocab, seed=100 + batch)):
        engine.add_request(rid, prompt, params)
    scheduler = engine.engine_core.scheduler
    while scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in scheduler.running):
        engine.step()
    steps = [timed_step(engine, meter) for _ in range(warmup + args.decode_steps)]
    if len(scheduler.running) != batch:
        raise RuntimeError(f"{len(scheduler.running)} of {batch} requests still running")
    engine.abort_request(ids)
    return steps[warmup:]


def summarise(steps: list[tuple[float, dict | None]]) -> dict:
    summary = {"ms": statistics.median(ms for ms, _ in steps), "steps": len(steps)}
    if steps[0][1] is not None:
        summary["wire"] = {f: statistics.median(w[f] for _, w in steps) for f in WIRE_FIELDS}
    return summary


def run_one(args) -> dict:
    """The child: build the engine, time its steps, shut it down."""
    from pagedllm import LLM

    tp, step_compiler, backend = VARIANTS[args.variant]
    start = time.perf_counter()
    llm = LLM(
        args.model,
        load_format="dummy",
        dtype="bfloat16",
        tensor_parallel_size=tp,
        step_compiler=step_compiler,
        distributed_executor_backend=backend,
        ray_address=args.ray_address,
        enable_prefix_caching=False,
        max_num_seqs=max(args.batch_sizes),
        max_num_batched_tokens=args.max_num_batched_tokens,
        kv_cache_memory=args.kv_cache_memory,
        max_model_len=max(args.prompt_len, args.context + args.decode_steps) + 8,
    )
    engine = llm.engine
    try:
        startup = time.perf_counter() - start
        meter = None
        if tp > 1 and backend == "mp":  # Ray's rank 0 runs in an actor, out of the meter's reach
            meter = WireMeter()
            meter.install()
        vocab = engine.model_config.vocab_size
        result = {"variant": args.variant, "startup_s": startup}
        result["prefill"] = summarise(time_prefills(engine, args, vocab, meter))
        for batch in args.batch_sizes:
            result[f"decode{batch}"] = summarise(time_decodes(engine, args, batch, vocab, meter))
        return result
    finally:
        engine.shutdown()


# ---- the driver: interleaved runs, the table ---------------------------------------------------


def child_command(args, variant: str, model: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--variant",
        variant,
        "--model",
        model,
        "--batches",
        args.batches,
        "--prompt-len",
        str(args.prompt_len),
        "--context",
        str(args.context),
        "--decode-steps",
        str(args.decode_steps),
        "--prefill-reps",
        str(args.prefill_reps),
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
        "--kv-cache-memory",
        str(args.kv_cache_memory),
    ] + (["--ray-address", args.ray_address] if args.ray_address else [])


def run_child(args, variant: str, model: str) -> dict:
    proc = subprocess.run(
        child_command(args, variant, model), capture_output=True, text=True, timeout=args.run_timeout
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(f"{variant} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def workloads(args) -> list[tuple[str, str]]:
    rows = [("prefill", f"prefill {args.prompt_len} tokens")]
    rows += [(f"decode{b}", f"decode batch {b} (ctx ~{args.context})") for b in args.batch_sizes]
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def ratio_cell(runs: dict[str, list[dict]], key: str, num: str, den: str) -> str:
    """Median and min-max of the per-repetition ratios num / den (repetition i of each)."""
    ratios = [a[key]["ms"] / b[key]["ms"] for a, b in zip(runs[num], runs[den])]
    return f"{statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def step_table(args, runs: dict[str, list[dict]]) -> list[list[str]]:
    variants = [v for v in args.variant_list if runs[v]]
    candidates = (("tp2", "tp1"), ("tp2", "tp1-layers"), ("tp2-ray", "tp2"))
    pairs = [(n, d) for n, d in candidates if runs.get(n) and runs.get(d)]
    header = ["ms per step", *variants, *(f"{n} / {d}" for n, d in pairs)]
    rows = [header]
    for key, label in workloads(args):
        row = [label, *(spread([r[key]["ms"] for r in runs[v]]) for v in variants)]
        row += [ratio_cell(runs, key, n, d) for n, d in pairs]
        rows.append(row)
    rows.append(["start-up s", *(spread([r["startup_s"] for r in runs[v]]) for v in variants)])
    return rows


def wire_table(args, runs: list[dict]) -> list[list[str]]:
    """Rank 0's view of one TP=2 step, medians over steps and then over runs."""
    header = ["per TP=2 step", "broadcast B", "all-reduces", "all-reduce B", "all-gathers", "all-gather B"]
    header += ["broadcast ms", "all-reduce ms", "all-gather ms"]
    rows = [header]
    for key, label in workloads(args):

        def med(field: str, key: str = key) -> float:
            return statistics.median(r[key]["wire"][field] for r in runs)

        counts = [f"{med(f):,.0f}" for f in WIRE_FIELDS if not f.endswith("_ms")]
        times = [f"{med(f):.2f}" for f in ("broadcast_ms", "all_reduce_ms", "all_gather_ms")]
        rows.append([label, *counts, *times])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(
            "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


# ---- the probe: one collective alone, between two processes -----------------------------------


def latency_summary(us: list[float]) -> dict:
    us = sorted(us)
    return {"p10": us[len(us) // 10], "median": us[len(us) // 2], "p90": us[9 * len(us) // 10]}


def probe_rank(rank: int, port: int, hidden: int, tokens: list[int], calls: int, queue) -> None:
    """One of two ranks: the engine's own group set-up and all-reduce, timed call by call, with
    this process's CPU time and context switches per call (getrusage)."""
    import resource

    import torch

    from pagedllm.model.layers.parallel import all_reduce
    from pagedllm.worker.tp_group import destroy_tp_group, init_tp_group

    torch.set_num_threads(1)  # as each of 2 ranks gets on 2 cores
    init_tp_group(rank, 2, port, torch.device("cpu"))
    rows = {}
    for count in tokens:
        tensor = torch.randn(count, hidden).to(torch.bfloat16)
        for _ in range(calls // 5):  # warm-up
            all_reduce(tensor, 2)
        times, before = [], resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(calls):
            start = time.perf_counter()
            all_reduce(tensor, 2)
            times.append((time.perf_counter() - start) * 1e6)
        after = resource.getrusage(resource.RUSAGE_SELF)
        rows[count] = latency_summary(times)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        rows[count]["cpu_us"] = cpu * 1e6 / calls
        rows[count]["switches"] = (
            after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw
        ) / calls
    destroy_tp_group()
    if rank == 0:
        queue.put(rows)


def pingpong_rank(rank: int, port: int, size: int, calls: int, queue) -> None:
    """One end of a TCP round trip over loopback: what the wire alone costs for `size` bytes."""
    import socket

    if rank == 0:
        with socket.create_server(("127.0.0.1", port)) as server:
            queue.put("listening")
            conn, _ = server.accept()
    else:
        conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message, times = b"x" * size, []
    with conn:
        for _ in range(calls + calls // 5):
            start = time.perf_counter()
            if rank == 0:
                conn.sendall(message)
            got = 0
            while got < size:
                got += len(conn.recv(size - got))
            if rank == 1:
                conn.sendall(message)
            times.append((time.perf_counter() - start) * 1e6)
    if rank == 0:
        queue.put(latency_summary(times[calls // 5 :]))


def run_pair(target, args_of_rank) -> object:
    """Run `target` as ranks 0 and 1 in two spawned processes; rank 0's answer."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=target, args=(*args_of_rank(rank), queue)) for rank in (0, 1)]
    procs[0].start()
    if target is pingpong_rank:
        queue.get(timeout=60)  # rank 1 connects once rank 0 listens
    procs[1].start()
    try:
        return queue.get(timeout=120)
    finally:
        for proc in procs:
            proc.join(timeout=10)


def probe_collectives(hidden: int, tokens: list[int], calls: int) -> None:
    """Print the latency of the engine's all-reduce of [T, hidden] bf16 against a TCP round trip."""
    from pagedllm.worker.tp_group import free_port

    port = free_port()
    rows = run_pair(probe_rank, lambda rank: (rank, port, hidden, tokens, calls))
    table = [["2 ranks, 1 thread each", "bytes", "p10 us", "median us", "p90 us", "CPU us", "switches"]]
    for count in tokens:
        size, row = count * hidden * 2, rows[count]
        port = free_port()
        trip = run_pair(pingpong_rank, lambda rank, size=size, port=port: (rank, port, size, calls))
        table.append(
            [
                f"all-reduce [{count}, {hidden}] bf16",
                f"{size:,}",
                *(f"{row[k]:.0f}" for k in ("p10", "median", "p90", "cpu_us")),
                f"{row['switches']:.1f}",
            ]
        )
        table.append(["  TCP round trip", f"{size:,}", *(f"{trip[k]:.0f}" for k in ("p10", "median", "p90"))])
    print(
        f"\none collective alone ({calls} calls each; gloo on 127.0.0.1 as the engine sets it up;"
        " CPU time and context switches of rank 0's process per call)"
    )
    print_table(table)


def commit() -> str:
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return head.stdout.strip() or "?"


def drive(args) -> None:
    import ab
    import compare

    print(
        f"CPU: {ab.cpu_model()}; pagedllm {commit()}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"command: {' '.join(sys.argv)}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in args.variant_list}
    busy = []
    with tempfile.TemporaryDirectory(prefix="tp_overhead_") as tmp:
        model = args.model
        if model == "smol-tp":
            (Path(tmp) / "config.json").write_text(json.dumps(SMOL_TP_CONFIG))
            model = tmp
        for rep in range(args.reps):
            for variant in args.variant_list:
                busy.append(compare.wait_until_quiet(args.quiet_wait))
                result = run_child(args, variant, model)
                runs[variant].append(result)
                cells = ", ".join(f"{k} {result[k]['ms']:.1f}" for k, _ in workloads(args))
                print(
                    f"  rep {rep + 1} {variant:<10} {cells} ms (machine {busy[-1]:.0%} busy before)",
                    flush=True,
                )
    if args.reps:
        print(
            f"\nmedian [min-max] over {args.reps} runs of each run's median step (ms); ratios per repetition"
        )
        print_table(step_table(args, runs))
    if runs.get("tp2"):
        print("\nwhat rank 0 sends and waits for per TP=2 step (medians; ms include waiting for rank 1)")
        print_table(wire_table(args, runs["tp2"]))
    if args.probe_calls:
        probe_collectives(args.probe_hidden, [*args.batch_sizes, args.prompt_len], args.probe_calls)
    if args.output_json:
        Path(args.output_json).write_text(
            json.dumps({"argv": sys.argv, "busy": busy, "runs": runs}, indent=1)
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="smol-tp", help="smol-tp (see above) or a --load-format dummy model"
    )
    parser.add_argument(
        "--variants", default="tp1,tp1-layers,tp2", help=f"comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="runs of each variant, interleaved (0: the probe alone)"
    )
    parser.add_argument("--batches", default="1,16,32", help="decode batch sizes")
    parser.add_argument("--prompt-len", type=int, default=512, help="tokens of the prefilled prompt")
    parser.add_argument("--prefill-reps", type=int, default=4, help="timed prefill steps per run")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens of each decoding request")
    parser.add_argument("--decode-steps", type=int, default=24, help="timed decode steps per batch size")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--kv-cache-memory", type=float, default=0.5, help="GiB of KV cache per rank")
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="s to wait for a busy CPU to calm down"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="s before a run is abandoned")
    parser.add_argument(
        "--probe-calls", type=int, default=300, help="calls per size in the collective probe (0: skip it)"
    )
    parser.add_argument("--probe-hidden", type=int, default=576, help="hidden size of the probe's tensors")
    parser.add_argument("--output-json", help="keep every run's figures here")
    parser.add_argument(
        "--ray-address", default=None, help="the Ray cluster tp2-ray runs on (`ray start --head` first)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batches.split(",")]
    args.variant_list = args.variants.split(",")
    unknown = set(args.variant_list) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "tp2-ray" in args.variant_list and not args.ray_address:
        parser.error("tp2-ray runs on a Ray cluster: start one (ray start --head) and pass --ray-address")
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(RESULT_MARK + json.dumps(run_one(args)), flush=True)
    else:
        drive(args)


# Guarded: a process that imports this file (multiprocessing's spawn re-imports the main module)
# must not start a run of its own.
if __name__ == "__main__":
    main()

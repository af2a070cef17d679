"""SIGTERM drains the server: streams in flight finish (or, past --shutdown-timeout, end with a
clear error), /ready says not ready while /health stays 200, new requests get a 503, and the
process exits 0 without a traceback."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest

from conftest import _TINY_ENGINE, TINY_NAME
from live_server import start_server


@pytest.fixture
def tiny_server(tiny_model_dir, tmp_path, request):
    extra = getattr(request, "param", [])
    yield from start_server(
        [str(tiny_model_dir), "--served-model-name", TINY_NAME, *_TINY_ENGINE, *extra], tmp_path / "log"
    )


def run_streams(url: str, count: int, max_tokens: int, transcripts: list | None = None):
    """Start `count` streamed completions; returns (threads, results, first-token events).
    Each result is (completion tokens from the final usage, error code or None); `transcripts`,
    if given, gets each stream's status, event count and last three events (for a failure's
    message)."""
    results: list = [None] * count
    if transcripts is not None:
        transcripts.extend([None] * count)
    started = [threading.Event() for _ in range(count)]
    body = {
        "model": TINY_NAME,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    def stream(i: int) -> None:
        tokens, error, status, events = 0, None, None, []
        try:
            with httpx.stream(
                "POST", f"{url}/v1/completions", json={**body, "prompt": [7 + i, 3, 5]}, timeout=120
            ) as response:
                status = response.status_code
                if response.status_code != 200:
                    error = f"status {response.status_code}: {response.read()[:200]!r}"
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[:160])
                    if not line.startswith("data: {"):
                        continue
                    started[i].set()
                    payload = json.loads(line[len("data: ") :])
                    if "error" in payload:
                        error = payload["error"]["code"]
                    elif payload.get("usage"):
                        tokens = payload["usage"]["completion_tokens"]
        except httpx.HTTPError as exc:  # the connection cut: what a drain must never do
            error = f"{type(exc).__name__}: {exc}"
        except json.JSONDecodeError as exc:  # an event cut in two (a raw U+2028 did this once)
            error = f"unparseable event: {exc}"
        finally:
            started[i].set()
            results[i] = (tokens, error)
            if transcripts is not None:
                transcripts[i] = (status, len(events), events[-3:])

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results, started


def test_sigterm_lets_40_streams_finish_then_exits_0(tiny_server):
    server = tiny_server
    threads, results, started = run_streams(server.url, 40, max_tokens=300)
    for event in started:
        assert event.wait(60)
    server.process.send_signal(signal.SIGTERM)
    # Draining: not ready, still alive, new work refused with a 503 that says why.
    ready = httpx.get(f"{server.url}/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "server_shutting_down"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    late = httpx.post(
        f"{server.url}/v1/completions", json={"model": TINY_NAME, "prompt": "hi", "max_tokens": 2}, timeout=10
    )
    assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    for thread in threads:
        thread.join(120)
    assert results == [(300, None)] * 40
    assert server.process.wait(timeout=60) == 0
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "shutting down" in log and "drained" in log


@pytest.mark.parametrize("tiny_server", [["--shutdown-timeout", "1"]], indirect=True)
def test_streams_past_the_shutdown_timeout_end_with_a_clear_error(tiny_server):
    server = tiny_server
    # 16 long streams share 64 KV blocks: far more work than one second holds.
    transcripts: list = []
    threads, results, started = run_streams(server.url, 16, max_tokens=500, transcripts=transcripts)
    for event in started:
        assert event.wait(60)
    server.process.send_signal(signal.SIGINT)  # Ctrl-C: the same drain
    for thread in threads:
        thread.join(120)
    ended = [r for r in results if r[1] == "server_shutting_down"]
    odd = [(i, r, transcripts[i]) for i, r in enumerate(results) if r not in ended and r != (500, None)]
    # (A stream ending with neither its tokens nor an error was seen twice under load, never
    # reproduced on its own: the transcript says how it ended.)
    assert ended and not odd, (results, odd, server.log()[-3000:])
    assert server.process.wait(timeout=60) == 0
    assert "Traceback" not in server.log(), server.log()[-3000:]

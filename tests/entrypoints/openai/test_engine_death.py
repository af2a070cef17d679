"""A server whose engine core process dies: the open stream ends with an `engine_dead` error
event, /health answers 503, and new requests are refused instead of hanging."""

from __future__ import annotations

import json
import os
import re
import signal

import httpx

TINY_NAME = "tiny"
BODY = {"model": TINY_NAME, "prompt": "The quick", "max_tokens": 400, "ignore_eos": True}


def stream_killing(url: str, pid: int) -> list[str]:
    """A long streamed completion's event payloads, `pid` killed after the third event."""
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json={**BODY, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[len("data: ") :])
            if len(events) == 3:
                os.kill(pid, signal.SIGKILL)
    return events


def test_killed_core_ends_streams_and_health_says_503(doomed_server):
    match = re.search(r"engine core process started \(pid (\d+)\)", doomed_server.log())
    assert match, doomed_server.log()[-2000:]
    core_pid = int(match.group(1))
    assert httpx.get(f"{doomed_server.url}/health").status_code == 200
    events = stream_killing(doomed_server.url, core_pid)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_dead" and "died" in error["message"], error
    health = httpx.get(f"{doomed_server.url}/health")
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_dead"
    late = httpx.post(f"{doomed_server.url}/v1/completions", json=BODY, timeout=30)
    assert late.status_code == 503, late.text


def test_killed_tensor_parallel_worker_ends_streams_and_health_says_503(doomed_tp_server):
    """Rank 1 of a TP=2 engine killed mid-stream: the collective it breaks fails the engine core,
    so the stream ends with `engine_dead` and /health answers 503, as when the core dies."""
    match = re.search(r"tensor parallelism: 2 ranks \(workers pid (\d+)\)", doomed_tp_server.log())
    assert match, doomed_tp_server.log()[-2000:]
    worker_pid = int(match.group(1))
    events = stream_killing(doomed_tp_server.url, worker_pid)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_dead"
    health = httpx.get(f"{doomed_tp_server.url}/health")
    assert health.status_code == 503 and health.json()["error"]["code"] == "engine_dead"

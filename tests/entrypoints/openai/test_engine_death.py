"""Engine recovery: a server whose engine core dies (kill -9) or hangs (SIGSTOP, caught by the
watchdog) ends the open stream with an `engine_dead` error event, answers /health 503 while a
new core starts, then serves again with the same greedy output as before. With no restarts
left (a tensor-parallel worker killed under --max-engine-restarts 0) the server exits 1."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

TINY_NAME = "tiny"
BODY = {"model": TINY_NAME, "prompt": "The quick", "max_tokens": 400, "ignore_eos": True}
GREEDY = {"model": TINY_NAME, "prompt": [11, 12, 13], "max_tokens": 24, "temperature": 0, "ignore_eos": True}


def stream_with(url: str, pid: int, sig: int) -> list[str]:
    """A long streamed completion's event payloads, `sig` sent to `pid` after the third event."""
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json={**BODY, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[len("data: ") :])
            if len(events) == 3:
                os.kill(pid, sig)
    return events


def core_pid(url: str) -> int:
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 200, health.text
    return health.json()["replicas"][0]["pid"]


def wait_healthy_again(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=10).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"not healthy again within {timeout} s")


def restarts(url: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "pagedllm:engine_restarts_total":
                return sample.value
    raise AssertionError("pagedllm:engine_restarts_total not exported")


def test_a_dead_or_hung_core_is_replaced_and_serves_the_same(doomed_server):
    url = doomed_server.url
    before = httpx.post(f"{url}/v1/completions", json=GREEDY, timeout=60).json()["choices"][0]["text"]
    for sig, reason in ((signal.SIGKILL, "died"), (signal.SIGSTOP, "no progress")):
        pid = core_pid(url)
        events = stream_with(url, pid, sig)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "engine_dead" and "died" in error["message"], error
        assert reason in doomed_server.log()
        wait_healthy_again(url)
        assert core_pid(url) != pid
        after = httpx.post(f"{url}/v1/completions", json=GREEDY, timeout=60)
        assert after.status_code == 200 and after.json()["choices"][0]["text"] == before
    assert restarts(url) == 2
    assert doomed_server.process.poll() is None  # the server itself never stopped


def test_killed_tensor_parallel_worker_with_no_restarts_left_exits_1(doomed_tp_server):
    """Rank 1 of a TP=2 engine killed mid-stream: the collective it breaks fails the engine
    core, so the stream ends with `engine_dead`; with --max-engine-restarts 0 the server then
    exits 1 for a supervisor to restart it."""
    url = doomed_tp_server.url
    log = doomed_tp_server.log()
    worker_pid = int(log.split("tensor parallelism: 2 ranks (workers pid ")[1].split(")")[0])
    events = stream_with(url, worker_pid, signal.SIGKILL)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_dead"
    assert doomed_tp_server.process.wait(timeout=60) == 1
    assert "no restart is left" in doomed_tp_server.log()

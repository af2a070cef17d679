"""Server life: the start-up report, aborting requests whose client left, errors inside a stream."""

from __future__ import annotations

import asyncio
import json
import re
import time
from types import SimpleNamespace

import httpx
import pytest

from pagedllm.engine.async_llm import EngineDeadError
from pagedllm.entrypoints.openai.completions import _Completion, _Prompt
from pagedllm.entrypoints.openai.protocol import CompletionRequest
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import SamplingParams

LONG = {"prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}


def _wait_for_log(server, pattern: str, count: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, server.log())) >= count:
            return
        time.sleep(0.1)
    pytest.fail(f"{pattern!r} not logged {count} times:\n{server.log()[-2000:]}")


def _running(server) -> float | None:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r"^pagedllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_startup_reports_kv_capacity_and_concurrency(server):
    line = re.search(
        r"KV cache: (\d+) tokens; maximum concurrency for (\d+)-token requests: ([\d.]+)x", server.log()
    )
    assert line, server.log()[-2000:]
    capacity, max_len, concurrency = int(line[1]), int(line[2]), float(line[3])
    assert max_len == 8192 and capacity > 0
    assert concurrency == pytest.approx(capacity / max_len, abs=0.01)


def test_disconnect_aborts_non_streaming_and_streaming_requests(server):
    aborted = "client disconnected; request aborted"
    before = server.log().count(aborted)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=LONG, timeout=1.0)
    _wait_for_log(server, aborted, before + 1)
    with httpx.stream("POST", f"{server.url}/v1/completions", json=LONG | {"stream": True}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                request_id = json.loads(line[len("data: ") :])["id"]
                break
    _wait_for_log(server, f"{request_id}: {aborted}")
    deadline = time.monotonic() + 10
    while _running(server) not in (None, 0.0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(server) in (None, 0.0)


async def _outputs_then_failure():
    yield RequestOutput(
        request_id="r",
        prompt="hi",
        prompt_token_ids=[1, 2],
        prompt_logprobs=None,
        outputs=[CompletionOutput(0, " there", [3], None, None)],
        finished=False,
    )
    raise EngineDeadError("the engine stopped")


def test_an_error_inside_a_stream_is_the_last_event_before_done():
    ctx = SimpleNamespace(served_model_name="m", token_text=str, tokenizer=None)
    req = CompletionRequest.model_validate({"prompt": "hi", "stream": True})
    completion = _Completion(ctx, req, [_Prompt("hi", [1, 2], SamplingParams())])

    async def collect() -> list[str]:
        return [event async for event in completion.stream([_outputs_then_failure()])]

    events = asyncio.run(collect())
    assert json.loads(events[0][len("data: ") :])["choices"][0]["text"] == " there"
    error = json.loads(events[-2][len("data: ") :])["error"]
    assert set(error) == {"message", "type", "param", "code"} and "engine stopped" in error["message"]
    assert events[-1] == b"data: [DONE]\n\n" and len(events) == 3

"""Admission control: with 4 seats and a queue of 8, 40 long requests sent at once: the 12 that
fit are served, the rest get a 429 with Retry-After and an OpenAI error body, nothing is a 5xx,
and /metrics counts the refusals."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import _TINY_ENGINE, TINY_NAME
from live_server import start_server


@pytest.fixture(scope="module")
def bounded_server(tiny_model_dir, tmp_path_factory):
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, *_TINY_ENGINE]
    args += ["--max-num-seqs", "4", "--max-num-queued-requests", "8"]
    yield from start_server(args, tmp_path_factory.mktemp("admission") / "server.log")


def rejected_total(server) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == "pagedllm:requests_rejected_total" and sample.labels["reason"] == "queue_full":
                return sample.value
    raise AssertionError("pagedllm:requests_rejected_total not exported")


def test_40_long_requests_against_4_seats_and_a_queue_of_8(bounded_server):
    server = bounded_server
    before = rejected_total(server)

    async def send_all():
        async with httpx.AsyncClient(timeout=300) as client:
            body = {"model": TINY_NAME, "max_tokens": 300, "ignore_eos": True}
            return await asyncio.gather(
                *(
                    client.post(f"{server.url}/v1/completions", json={**body, "prompt": [9 + i, 4]})
                    for i in range(40)
                )
            )

    responses = asyncio.run(send_all())
    statuses = [r.status_code for r in responses]
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(served) + len(refused) == 40, statuses
    assert len(served) >= 12, statuses
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in served)
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "engine_overloaded" and error["type"] == "rate_limit_error"
        assert "--max-num-queued-requests" in error["message"]
    assert rejected_total(server) - before == len(refused)
    # Once the queue drains the server takes requests again.
    again = httpx.post(
        f"{server.url}/v1/completions", json={"model": TINY_NAME, "prompt": [5], "max_tokens": 4}
    )
    assert again.status_code == 200

"""Under load the server queues and preempts, never drops or changes an answer; a client that
leaves mid-stream has its request aborted and its KV blocks freed."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODEL
from greedy_streams import stream_greedy
from live_server import start_server
from numerics import assert_greedy_match

NUM_REQUESTS = 64
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def small_cache_server(tmp_path_factory):
    """float32 (deterministic greedy) with 40 blocks of 16 tokens: far fewer than 64 requests need."""
    log = tmp_path_factory.mktemp("load") / "server.log"
    yield from start_server(
        [MODEL, "--dtype", "float32", "--num-kv-blocks", "40", "--max-num-seqs", "64"], log
    )


def metric(server, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    text = httpx.get(f"{server.url}/metrics").text
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total, found = total + sample.value, True
    assert found, f"metric {name} {labels} not exported"
    return total


def test_64_concurrent_streams_with_preemption_equal_each_alone(small_cache_server):
    server = small_cache_server
    rng = random.Random(0)
    prompts = [
        [rng.randrange(1000, 49152) for _ in range(rng.randrange(20, 41))] for _ in range(NUM_REQUESTS)
    ]
    preemptions_before = metric(server, "pagedllm:num_preemptions_total")

    async def run_all(concurrently: bool):
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=600
        ) as c:
            if concurrently:
                return await asyncio.gather(*(stream_greedy(c, MODEL, p, MAX_TOKENS) for p in prompts))
            return [await stream_greedy(c, MODEL, p, MAX_TOKENS) for p in prompts]

    together = asyncio.run(run_all(concurrently=True))
    assert metric(server, "pagedllm:num_preemptions_total") > preemptions_before, "no preemption was forced"
    alone = asyncio.run(run_all(concurrently=False))
    for i, ((tokens, top2, _), (ref_tokens, _, ref_top2)) in enumerate(zip(together, alone)):
        assert len(tokens) == MAX_TOKENS
        assert_greedy_match(tokens, ref_tokens, ref_top2, top2, label=f"request {i}")
    assert metric(server, "pagedllm:kv_cache_usage_perc") == 0.0
    assert metric(server, "pagedllm:num_requests_running") == 0.0
    assert metric(server, "pagedllm:request_success_total", finished_reason="length") >= 2 * NUM_REQUESTS


def test_dropped_stream_is_aborted_and_server_keeps_serving(small_cache_server):
    server = small_cache_server
    aborts_before = metric(server, "pagedllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 3:
                break  # leave mid-stream: the connection closes here
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        metric(server, "pagedllm:request_success_total", finished_reason="abort") == aborts_before
        or metric(server, "pagedllm:kv_cache_usage_perc") > 0
    ):
        time.sleep(0.2)
    assert metric(server, "pagedllm:request_success_total", finished_reason="abort") == aborts_before + 1
    assert metric(server, "pagedllm:kv_cache_usage_perc") == 0.0
    assert metric(server, "pagedllm:num_requests_running") == 0.0
    tokens_before = metric(server, "pagedllm:generation_tokens_total")
    reply = server.client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5)
    assert reply.choices[0].text and reply.usage.completion_tokens == 5
    assert metric(server, "pagedllm:generation_tokens_total") == tokens_before + 5

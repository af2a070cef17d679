"""Two engine replicas behind one server (`--data-parallel-size 2`, tiny model, float32).

64 concurrent streams give what one engine gives and both replicas serve; requests sharing a
long prefix go where it is cached (that replica's prefix-hit counter shows it); a replica
killed mid-load ends its own requests with `engine_dead` while the other serves on, and
/health stays 200 naming the dead one. One server for the module: the kill comes last.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tiny_models
from conftest import _TINY_ENGINE, TINY_NAME
from greedy_streams import stream_greedy
from live_server import start_server
from numerics import assert_greedy_match

NUM_REQUESTS = 64
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def dp_server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("dp") / "server.log"
    # No restarts: the kill test checks a dead replica left out of routing (restarts have
    # their own test, test_engine_death.py).
    args = [str(tiny_model_dir), "--served-model-name", TINY_NAME, "--data-parallel-size", "2"]
    args += ["--max-engine-restarts", "0"]
    yield from start_server(args + _TINY_ENGINE, log)


def replica_metrics(server, name: str) -> dict[str, float]:
    """`name`'s value per `replica` label."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels["replica"]] = sample.value
    assert values, f"metric {name} not exported"
    return values


def total_metric(server, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"metric {name} not exported")


def run_streams(server, prompts, concurrently: bool):
    async def run():
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=600
        ) as c:
            if concurrently:
                return await asyncio.gather(*(stream_greedy(c, TINY_NAME, p, MAX_TOKENS) for p in prompts))
            return [await stream_greedy(c, TINY_NAME, p, MAX_TOKENS) for p in prompts]

    return asyncio.run(run())


def test_64_concurrent_requests_equal_one_engine_and_both_replicas_serve(dp_server, templated_server):
    """`templated_server` is one engine on the same weights and settings (its chat template
    plays no part in completions)."""
    rng = random.Random(0)
    prompts = [
        [rng.randrange(3, tiny_models.VOCAB) for _ in range(rng.randrange(20, 41))]
        for _ in range(NUM_REQUESTS)
    ]
    routed_before = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    together = run_streams(dp_server, prompts, concurrently=True)
    one_engine = run_streams(templated_server, prompts, concurrently=False)
    for i, ((tokens, top2, _), (ref_tokens, _, ref_top2)) in enumerate(zip(together, one_engine)):
        assert len(tokens) == MAX_TOKENS
        assert_greedy_match(tokens, ref_tokens, ref_top2, top2, label=f"request {i}")
    routed = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    served = {r: routed[r] - routed_before.get(r, 0) for r in routed}
    assert sum(served.values()) == NUM_REQUESTS and min(served.values()) >= NUM_REQUESTS // 4, served
    generated = replica_metrics(dp_server, "pagedllm:replica_generation_tokens_total")
    assert all(v > 0 for v in generated.values()), generated
    # The totals are the replicas' sums, and nothing is left held anywhere.
    assert total_metric(dp_server, "pagedllm:num_requests_running") == 0
    assert total_metric(dp_server, "pagedllm:kv_cache_usage_perc") == 0.0
    assert set(replica_metrics(dp_server, "pagedllm:replica_load_tokens").values()) == {0.0}


def test_requests_sharing_a_long_prefix_go_to_the_replica_that_cached_it(dp_server):
    rng = random.Random(1)
    prefix = [rng.randrange(3, tiny_models.VOCAB) for _ in range(160)]  # 10 blocks of 16
    client = dp_server.client()

    def send(suffix_len: int) -> None:
        prompt = prefix + [rng.randrange(3, tiny_models.VOCAB) for _ in range(suffix_len)]
        reply = client.completions.create(model=TINY_NAME, prompt=prompt, max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens == 4

    routed_before = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    send(5)
    routed = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    (home,) = [r for r in routed if routed[r] > routed_before.get(r, 0)]
    hits_before = replica_metrics(dp_server, "pagedllm:replica_prefix_cache_hits_total")
    for suffix_len in (3, 7, 11, 2, 9, 6):
        send(suffix_len)
    routed_after = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    hits = replica_metrics(dp_server, "pagedllm:replica_prefix_cache_hits_total")
    assert routed_after[home] - routed[home] == 6, (home, routed, routed_after)
    assert all(routed_after[r] == routed[r] for r in routed if r != home)
    # Every one of the six found the 160-token prefix cached where it went.
    assert hits[home] - hits_before[home] >= 6 * 160, (hits_before, hits)
    assert all(hits[r] == hits_before[r] for r in hits if r != home)


def test_killed_replica_ends_its_requests_and_the_other_serves_on(dp_server):
    health = httpx.get(f"{dp_server.url}/health")
    assert health.status_code == 200
    replicas = health.json()["replicas"]
    assert [r["status"] for r in replicas] == ["serving", "serving"], replicas

    # 16 streams of 503 tokens need 32 KV blocks each and a replica has 64: each replica can
    # hold two at once, so its share takes several rounds of 500 steps and is far from done when
    # the kill lands. (With 8 streams each replica could finish while the server was still
    # streaming its buffered tokens out, and the kill then found nothing to end.)
    num_streams, max_tokens = 16, 500
    body = {
        "model": TINY_NAME,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    results: list[tuple[int, str | None]] = [(0, None)] * num_streams
    tokens_flow = threading.Event()

    def stream(i: int) -> None:
        completion_tokens, error = 0, None
        with httpx.stream(
            "POST", f"{dp_server.url}/v1/completions", json={**body, "prompt": [5 + i, 7, 9]}, timeout=120
        ) as response:
            if response.status_code == 503:  # its replica died before the stream's first event
                response.read()
                results[i] = (0, response.json()["error"]["code"])
                return
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                payload = json.loads(line[len("data: ") :])
                tokens_flow.set()
                if "error" in payload:
                    error = payload["error"]["code"]
                elif payload.get("usage"):
                    completion_tokens = payload["usage"]["completion_tokens"]
        results[i] = (completion_tokens, error)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(num_streams)]
    routed_before = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while True:
        routed = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
        mine = {r: routed[r] - routed_before.get(r, 0) for r in routed}
        if sum(mine.values()) == num_streams:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.01)
    assert tokens_flow.wait(timeout=60)
    # Every stream is routed and tokens flow; kill the replica with more of them, at once.
    assert min(mine.values()) > 0, mine
    victim = max(replicas, key=lambda r: mine[str(r["replica"])])
    os.kill(victim["pid"], signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=120)
    lost = [r for r in results if r[1] is not None]
    finished = [r for r in results if r[1] is None]
    assert lost and finished, results
    assert all(error == "engine_dead" for _, error in lost), results
    assert all(tokens == max_tokens for tokens, _ in finished), results

    health = httpx.get(f"{dp_server.url}/health")
    assert health.status_code == 200
    states = health.json()
    dead, survivor = str(victim["replica"]), str(1 - victim["replica"])
    assert states["status"] == "degraded"
    assert {str(r["replica"]): r["status"] for r in states["replicas"]} == {dead: "dead", survivor: "serving"}
    assert "died" in states["replicas"][victim["replica"]]["error"]
    assert replica_metrics(dp_server, "pagedllm:replica_up") == {dead: 0.0, survivor: 1.0}

    # Later requests all go to the survivor and answer in full.
    routed = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    client = dp_server.client()
    for i in range(4):
        reply = client.completions.create(
            model=TINY_NAME,
            prompt=[11 + i, 4, 8],
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert reply.usage.completion_tokens == 8
    routed_after = replica_metrics(dp_server, "pagedllm:replica_requests_routed_total")
    assert routed_after[survivor] - routed[survivor] == 4 and routed_after[dead] == routed[dead]

"""AsyncLLM records Prometheus metrics for finished and aborted requests (tiny random model)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from pagedllm.config import EngineConfig
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.sampling_params import SamplingParams


def _values(llm: AsyncLLM) -> dict[tuple[str, str | None], float]:
    text = llm.metrics.render().decode()
    return {
        (s.name, s.labels.get("finished_reason")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model_name") == "tiny" and "le" not in s.labels
    }


async def _drive(llm: AsyncLLM) -> None:
    full = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0.0)
    async for _ in llm.generate({"prompt_token_ids": list(range(10, 30))}, full, "done"):
        pass
    long = SamplingParams(max_tokens=200, ignore_eos=True, temperature=0.0)
    stream = llm.generate({"prompt_token_ids": list(range(40, 52))}, long, "gone")
    async for _ in stream:
        break  # the client goes away after its first token
    await stream.aclose()
    for _ in range(200):  # the abort reaches the core, and its new state the gauges, asynchronously
        v = _values(llm)
        if (
            v[("pagedllm:request_success_total", "abort")] == 1
            and v[("pagedllm:num_requests_running", None)] == 0
        ):
            break
        await asyncio.sleep(0.01)


def test_async_llm_records_finished_and_aborted_requests(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), dtype="float32", num_kv_blocks=64)
    llm = AsyncLLM(config, model_name="tiny")
    try:
        asyncio.run(_drive(llm))
        v = _values(llm)
    finally:
        llm.shutdown()
    assert v[("pagedllm:request_success_total", "length")] == 1
    assert v[("pagedllm:request_success_total", "abort")] == 1
    assert v[("pagedllm:prompt_tokens_total", None)] == 20 + 12
    assert v[("pagedllm:generation_tokens_total", None)] >= 6 + 1
    assert v[("pagedllm:time_to_first_token_seconds_count", None)] == 2
    assert v[("pagedllm:request_queue_time_seconds_count", None)] == 2
    assert v[("pagedllm:e2e_request_latency_seconds_count", None)] == 1  # aborts have no e2e
    assert v[("pagedllm:inter_token_latency_seconds_count", None)] >= 5
    assert v[("pagedllm:num_requests_running", None)] == 0
    assert v[("pagedllm:kv_cache_usage_perc", None)] == 0.0
    assert v[("pagedllm:prefix_cache_queries_total", None)] == 32

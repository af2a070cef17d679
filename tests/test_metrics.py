"""EngineMetrics fed with synthetic scheduler stats and request outputs, read back as Prometheus text."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagedllm.core.scheduler import SchedulerStats
from pagedllm.metrics import EngineMetrics
from pagedllm.outputs import CompletionOutput, RequestMetrics, RequestOutput


def _stats(running=0, waiting=0, usage=0.0, queries=0, hits=0, preemptions=0) -> SchedulerStats:
    return SchedulerStats(running, waiting, usage, queries, hits, preemptions)


def _samples(metrics: EngineMetrics) -> dict[tuple[str, tuple], float]:
    """Every exported sample: (sample name, sorted labels) -> value."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(metrics: EngineMetrics, name: str, **labels) -> float:
    labels = {"model_name": metrics.model_name} | labels
    return _samples(metrics)[(name, tuple(sorted(labels.items())))]


def _output(
    rid: str,
    metrics: RequestMetrics,
    completions: list[tuple[int, list[int], str | None]],
    finished: bool = False,
    prompt_len: int = 5,
) -> RequestOutput:
    """A RequestOutput; `metrics` is copied, as the output processor copies it per output."""
    return RequestOutput(
        request_id=rid,
        prompt=None,
        prompt_token_ids=list(range(prompt_len)),
        prompt_logprobs=None,
        outputs=[
            CompletionOutput(i, "x" * len(ids), ids, None, None, reason) for i, ids, reason in completions
        ],
        finished=finished,
        metrics=RequestMetrics(**{k: getattr(metrics, k) for k in metrics.__slots__}),
    )


def _deliver(m: RequestMetrics, now: float, n: int = 1) -> RequestMetrics:
    """Advance a request's metrics as the output processor does when n tokens arrive at `now`."""
    m.first_token_time = m.first_token_time if m.first_token_time is not None else now
    m.last_token_time = now
    m.num_generation_tokens += n
    return m


def _three_token_request(kind: str) -> list[RequestOutput]:
    """One request (5 prompt tokens) arriving at 100, scheduled at 100.5, tokens at 101, 101.125, 101.5."""
    m = RequestMetrics(arrival_time=100.0, first_scheduled_time=100.5)
    outs = []
    for i, t in enumerate((101.0, 101.125, 101.5)):
        _deliver(m, t)
        last = i == 2
        if last:
            m.finished_time = t
        ids = [7] if kind == "delta" else [7] * (i + 1)
        if kind != "final" or last:
            outs.append(_output("a", m, [(0, ids, "length" if last else None)], finished=last))
    return outs


def test_names_types_suffixes_and_labels():
    metrics = EngineMetrics("tiny-model")
    metrics.record_step(_stats(running=2, waiting=1, usage=0.25), [])
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    expected = {
        "pagedllm:num_requests_running": "gauge",
        "pagedllm:num_requests_waiting": "gauge",
        "pagedllm:kv_cache_usage_perc": "gauge",
        "pagedllm:prefix_cache_queries": "counter",
        "pagedllm:prefix_cache_hits": "counter",
        "pagedllm:num_preemptions": "counter",
        "pagedllm:prompt_tokens": "counter",
        "pagedllm:generation_tokens": "counter",
        "pagedllm:request_success": "counter",
        "pagedllm:time_to_first_token_seconds": "histogram",
        "pagedllm:inter_token_latency_seconds": "histogram",
        "pagedllm:e2e_request_latency_seconds": "histogram",
        "pagedllm:request_queue_time_seconds": "histogram",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    counter_samples = {s.name for s in families["pagedllm:prompt_tokens"].samples}
    assert counter_samples == {"pagedllm:prompt_tokens_total"}
    success = families["pagedllm:request_success"].samples
    assert {s.labels["finished_reason"] for s in success} == {"stop", "length", "abort"}
    assert all(s.labels["model_name"] == "tiny-model" for s in success)
    assert _value(metrics, "pagedllm:num_requests_running") == 2
    assert _value(metrics, "pagedllm:num_requests_waiting") == 1
    assert _value(metrics, "pagedllm:kv_cache_usage_perc") == 0.25
    assert metrics.content_type.startswith("text/plain")


def test_scheduler_counters_grow_by_their_difference():
    metrics = EngineMetrics("m")
    metrics.record_scheduler_stats(_stats(queries=100, hits=40, preemptions=1))
    metrics.record_scheduler_stats(_stats(queries=100, hits=40, preemptions=1))  # nothing new
    metrics.record_scheduler_stats(_stats(queries=150, hits=60, preemptions=3))
    assert _value(metrics, "pagedllm:prefix_cache_queries_total") == 150
    assert _value(metrics, "pagedllm:prefix_cache_hits_total") == 60
    assert _value(metrics, "pagedllm:num_preemptions_total") == 3
    metrics.record_scheduler_stats(_stats(queries=10, hits=2))  # a fresh scheduler restarted from 0
    assert _value(metrics, "pagedllm:prefix_cache_queries_total") == 160
    assert _value(metrics, "pagedllm:prefix_cache_hits_total") == 62


@pytest.mark.parametrize("kind", ["delta", "cumulative", "final"])
def test_request_latencies_and_tokens(kind):
    metrics = EngineMetrics("m")
    for output in _three_token_request(kind):
        metrics.record_outputs([output])
    v = lambda name, **labels: _value(metrics, name, **labels)  # noqa: E731
    assert v("pagedllm:prompt_tokens_total") == 5
    assert v("pagedllm:generation_tokens_total") == 3
    assert v("pagedllm:request_success_total", finished_reason="length") == 1
    assert v("pagedllm:request_success_total", finished_reason="stop") == 0
    assert v("pagedllm:time_to_first_token_seconds_count") == 1
    assert v("pagedllm:time_to_first_token_seconds_sum") == pytest.approx(1.0)
    assert v("pagedllm:request_queue_time_seconds_sum") == pytest.approx(0.5)
    assert v("pagedllm:e2e_request_latency_seconds_count") == 1
    assert v("pagedllm:e2e_request_latency_seconds_sum") == pytest.approx(1.5)
    if kind == "final":  # delivered once: no gaps between deliveries to measure
        assert v("pagedllm:inter_token_latency_seconds_count") == 0
    else:
        assert v("pagedllm:inter_token_latency_seconds_count") == 2
        assert v("pagedllm:inter_token_latency_seconds_sum") == pytest.approx(0.5)
        assert v("pagedllm:inter_token_latency_seconds_bucket", le="0.1") == 0  # gaps 0.125 and 0.375
        assert v("pagedllm:inter_token_latency_seconds_bucket", le="0.15") == 1
        assert v("pagedllm:inter_token_latency_seconds_bucket", le="0.4") == 2
    assert not metrics._requests  # finished requests are forgotten


def test_n_samples_count_each_finished_sequence_once():
    metrics = EngineMetrics("m")
    m = RequestMetrics(arrival_time=0.0, first_scheduled_time=0.0)
    # cumulative mode: sample 0 stops early and is repeated in every later output
    metrics.record_outputs([_output("r", _deliver(m, 1.0, 2), [(0, [1], None), (1, [2], None)])])
    metrics.record_outputs([_output("r", _deliver(m, 2.0, 2), [(0, [1, 3], "stop"), (1, [2, 4], None)])])
    m.finished_time = 3.0
    out = _output("r", _deliver(m, 3.0, 1), [(0, [1, 3], "stop"), (1, [2, 4, 5], "length")], finished=True)
    metrics.record_outputs([out])
    assert _value(metrics, "pagedllm:request_success_total", finished_reason="stop") == 1
    assert _value(metrics, "pagedllm:request_success_total", finished_reason="length") == 1
    assert _value(metrics, "pagedllm:prompt_tokens_total") == 5  # the prompt once, as usage counts it
    assert _value(metrics, "pagedllm:generation_tokens_total") == 5
    assert _value(metrics, "pagedllm:inter_token_latency_seconds_count") == 3  # tokens after the first step


def test_aborts_are_counted_and_forget_the_request():
    metrics = EngineMetrics("m")
    m = RequestMetrics(arrival_time=0.0)
    metrics.record_outputs([_output("r", _deliver(m, 1.0), [(0, [1], None)])])
    assert "r" in metrics._requests
    metrics.record_abort("r", 1)
    metrics.record_abort("gone", 0)  # already finished or unknown: nothing ended here
    assert _value(metrics, "pagedllm:request_success_total", finished_reason="abort") == 1
    assert not metrics._requests


def test_two_instances_do_not_collide():
    a, b = EngineMetrics("a"), EngineMetrics("b")
    a.record_step(_stats(running=3, queries=10), [])
    b.record_step(_stats(running=1, queries=4), [])
    assert a.registry is not b.registry
    assert _value(a, "pagedllm:num_requests_running") == 3
    assert _value(b, "pagedllm:num_requests_running") == 1
    assert _value(a, "pagedllm:prefix_cache_queries_total") == 10
    assert _value(b, "pagedllm:prefix_cache_queries_total") == 4
    assert all(labels[0][1] == "a" for (_, labels) in _samples(a) if labels and labels[0][0] == "model_name")


def test_periodic_log_line(caplog):
    metrics = EngineMetrics("m", log_interval_s=10.0)
    start = metrics._window.start
    assert metrics.log_if_due(start + 12.0) is None  # idle window: no line
    start += 12.0
    metrics.record_step(_stats(running=1, waiting=2, usage=0.5, queries=100, hits=25), [])
    for output in _three_token_request("delta"):
        metrics.record_outputs([output])
    assert metrics.log_if_due(start + 5.0) is None  # not due yet
    with caplog.at_level(logging.INFO, logger="pagedllm.metrics"):
        line = metrics.log_if_due(start + 10.0)
    assert line == (
        "Avg prompt throughput: 0.5 tokens/s, Avg generation throughput: 0.3 tokens/s, "
        "Running: 1 reqs, Waiting: 2 reqs, KV cache usage: 50.0%, Prefix cache hit rate: 25.0%"
    )
    assert caplog.records[-1].name == "pagedllm.metrics" and caplog.records[-1].message == line
    metrics.record_scheduler_stats(_stats())
    assert metrics.log_if_due(start + 20.0) is None  # the next window saw nothing

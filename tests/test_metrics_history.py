"""MetricsHistory: per-interval rates and mean TTFT from the running totals, and `since`."""

from __future__ import annotations

import time

import pytest

from pagedllm.core.scheduler import SchedulerStats
from pagedllm.metrics_history import MetricsHistory, MetricTotals


def test_samples_are_rates_over_the_interval_and_since_returns_newer_ones():
    history = MetricsHistory(interval_s=0.05, kept=3)
    totals = MetricTotals()
    stats = SchedulerStats(2, 1, 0.25, 0, 0, 0)
    history.sample_if_due(totals, stats)
    assert list(history.samples) == []  # no interval has passed yet
    time.sleep(0.06)
    totals.prompt_tokens, totals.generation_tokens = 600, 30
    totals.first_tokens, totals.ttft_seconds = 2, 0.5
    history.sample_if_due(totals, stats)
    (first,) = history.samples
    assert first.prompt_tokens_per_s == pytest.approx(600 / 0.06, rel=0.3)
    assert first.generation_tokens_per_s == pytest.approx(30 / 0.06, rel=0.3)
    assert first.ttft_ms == pytest.approx(250.0)  # the mean of the two first tokens' TTFT
    assert (first.kv_cache_usage, first.num_running, first.num_waiting) == (0.25, 2, 1)
    for _ in range(3):
        time.sleep(0.06)
        history.sample_if_due(totals, None)
    samples = list(history.samples)
    assert len(samples) == 3  # the oldest fell out
    assert all(s.ttft_ms is None and s.generation_tokens_per_s == 0 for s in samples)
    assert history.since(None) == samples
    assert history.since(samples[0].time) == samples[1:]
    assert history.since(samples[-1].time) == []

"""MetricsHistory: one sample a second of throughput, TTFT and load, for the last minutes.

The web console plots these; keeping them in the server (not only in an open page) means a
page opened now still shows the last ten minutes. Samples are differences of `MetricTotals`
between two ticks, so sampling costs the same whatever the load.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedllm.core.scheduler import SchedulerStats

SAMPLE_INTERVAL_S = 1.0
KEPT_SAMPLES = 600  # ten minutes


@dataclass(slots=True)
class MetricTotals:
    """Running totals since start, readable as plain numbers (the web console's history
    samples them once a second); sequences by how they ended, as `request_success` counts."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    first_tokens: int = 0
    ttft_seconds: float = 0.0
    sequences_finished: int = 0
    sequences_aborted: int = 0


@dataclass(frozen=True, slots=True)
class HistorySample:
    """What one interval (ending at `time`, wall clock) saw; `ttft_ms` is None when no request
    got its first token in it."""

    time: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    ttft_ms: float | None
    kv_cache_usage: float
    num_running: int
    num_waiting: int


class MetricsHistory:
    """A ring of `HistorySample`s; `sample_if_due` is called often (every receive-loop turn),
    and records one when an interval has passed. Not thread-safe: the caller holds a lock."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, kept: int = KEPT_SAMPLES):
        self.interval_s = interval_s
        self.samples: deque[HistorySample] = deque(maxlen=kept)
        self._last_tick = time.monotonic()
        self._last = (0, 0, 0, 0.0)

    def sample_if_due(self, totals: MetricTotals, stats: SchedulerStats | None) -> None:
        now = time.monotonic()
        elapsed = now - self._last_tick
        if elapsed < self.interval_s:
            return
        current = (totals.prompt_tokens, totals.generation_tokens, totals.first_tokens, totals.ttft_seconds)
        prompt, generation, first_tokens, ttft_seconds = (a - b for a, b in zip(current, self._last))
        self.samples.append(
            HistorySample(
                time=time.time(),
                prompt_tokens_per_s=prompt / elapsed,
                generation_tokens_per_s=generation / elapsed,
                ttft_ms=ttft_seconds / first_tokens * 1e3 if first_tokens else None,
                kv_cache_usage=stats.kv_cache_usage if stats is not None else 0.0,
                num_running=stats.num_running if stats is not None else 0,
                num_waiting=stats.num_waiting if stats is not None else 0,
            )
        )
        self._last_tick = now
        self._last = current

    def since(self, after: float | None) -> list[HistorySample]:
        """Samples newer than `after` (wall clock), oldest first; all of them for None."""
        if after is None:
            return list(self.samples)
        newer = []
        for sample in reversed(self.samples):
            if sample.time <= after:
                break
            newer.append(sample)
        return newer[::-1]

"""Admission control: how many requests (and prompt tokens) may wait for a seat, and how long.

The queue is what waits beyond the running seats: of the scheduler's waiting requests, those
that the free seats (max_num_seqs - running) cannot take at the next step. A new user request
(its n samples together) that would push the queue past `max_requests` or `max_tokens` is
refused; so is a request that has waited `max_wait` seconds without ever being scheduled
(requests already started, preempted ones included, are never refused: their output has begun).
The engine core answers refusals as 429s. Pure Python, O(waiting requests) per check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedllm.core.scheduler import Scheduler
    from pagedllm.request import Request


@dataclass
class AdmissionControl:
    """The bounds (None: unbounded) and when each waiting request was queued here."""

    max_requests: int | None = None
    max_tokens: int | None = None
    max_wait: float | None = None
    _queued_at: dict[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.max_requests is not None or self.max_tokens is not None or self.max_wait is not None

    def refusal(self, scheduler: Scheduler, prompt_lens: Sequence[int]) -> str | None:
        """Why a new user request of these samples' prompt lengths cannot queue (None: it can)."""
        if self.max_requests is None and self.max_tokens is None:
            return None
        free_seats = max(0, scheduler.scheduler_config.max_num_seqs - len(scheduler.running))
        queued = list(scheduler.waiting)[free_seats:]
        # The new samples take seats that are still free before they queue.
        spill = max(0, len(prompt_lens) - max(0, free_seats - len(scheduler.waiting)))
        if self.max_requests is not None and len(queued) + spill > self.max_requests:
            return (
                f"the engine's waiting queue is full ({len(queued)} requests waiting for a seat, at "
                f"most {self.max_requests}: --max-num-queued-requests); retry later"
            )
        if self.max_tokens is not None and spill:
            queued_tokens = sum(r.num_prompt_tokens for r in queued)
            new_tokens = sum(sorted(prompt_lens)[-spill:])
            if queued_tokens + new_tokens > self.max_tokens:
                return (
                    f"the engine's waiting queue holds {queued_tokens} prompt tokens and this request "
                    f"adds {new_tokens}, more than {self.max_tokens} (--max-num-queued-tokens); retry later"
                )
        return None

    def queued(self, request_id: str, now: float | None = None) -> None:
        """Start a request's wait (only tracked when `max_wait` is set)."""
        if self.max_wait is not None:
            self._queued_at[request_id] = time.monotonic() if now is None else now

    def expired(self, scheduler: Scheduler, now: float | None = None) -> list[Request]:
        """Waiting requests never scheduled whose wait passed `max_wait` (oldest first). Requests
        that were scheduled once, or left, are forgotten on the way."""
        if self.max_wait is None or not self._queued_at:
            return []
        now = time.monotonic() if now is None else now
        expired = []
        for request_id, since in list(self._queued_at.items()):  # queued order: oldest first
            request = scheduler.requests.get(request_id)
            if request is None or request.first_scheduled_time is not None:
                del self._queued_at[request_id]
            elif now - since > self.max_wait:
                del self._queued_at[request_id]
                expired.append(request)
            else:
                break  # every later entry was queued later still
        return expired

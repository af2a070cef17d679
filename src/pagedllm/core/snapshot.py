"""A picture of one scheduler at one moment: its KV block pools and the requests it holds.

What the web console's engine view draws, taken by the engine core between two steps when a
front end asks (`RequestSnapshot` on the wire). Cheap by construction: each pool's block states
are a copy of the byte array the pool keeps current (`BlockPool.states`), and the request
lists cost O(requests listed), capped at `MAX_LISTED_REQUESTS` each.
"""

from __future__ import annotations

import time

import msgspec

from pagedllm.core.block_pool import BLOCK_CACHED, BLOCK_FREE, BLOCK_IN_USE, NULL_BLOCK_ID
from pagedllm.request import Request, RequestStatus

# Running and waiting requests listed per snapshot; the counts say how many there are in all.
MAX_LISTED_REQUESTS = 256


class KVGroupSnapshot(msgspec.Struct, array_like=True, gc=False):
    """One KV-cache group's pool: `block_states[i]` is block id i + 1's state (BLOCK_FREE,
    BLOCK_IN_USE or BLOCK_CACHED); the null block is left out."""

    sliding_window: int | None
    num_blocks: int
    num_free: int
    num_in_use: int
    num_cached: int
    block_states: bytes


class RequestProgress(msgspec.Struct, array_like=True, gc=False):
    """How far one request has come; `num_blocks` sums its real blocks over the groups."""

    request_id: str
    status: str  # "running", "waiting" or "preempted"
    num_prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int
    max_tokens: int
    num_blocks: int


class SchedulerSnapshot(msgspec.Struct, array_like=True, gc=False):
    """A core's state after step `step`; `replica` is the core's data-parallel rank."""

    replica: int
    step: int
    time: float
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    kv_groups: list[KVGroupSnapshot]
    running: list[RequestProgress]
    waiting: list[RequestProgress]


_STATUS_NAMES = {
    RequestStatus.WAITING: "waiting",
    RequestStatus.RUNNING: "running",
    RequestStatus.PREEMPTED: "preempted",
}


def take_snapshot(scheduler, replica: int = 0, step: int = 0) -> SchedulerSnapshot:
    """The scheduler's pools and requests now (call between steps, on the core's thread)."""
    manager = scheduler.kv_cache_manager
    groups = []
    for group in manager.groups:
        pool = group.block_pool
        states = bytes(pool.states[NULL_BLOCK_ID + 1 :])
        num_in_use = pool.num_blocks - pool.num_free_blocks
        num_cached = states.count(BLOCK_CACHED)
        groups.append(
            KVGroupSnapshot(
                sliding_window=group.sliding_window,
                num_blocks=pool.num_blocks,
                num_free=pool.num_free_blocks - num_cached,
                num_in_use=num_in_use,
                num_cached=num_cached,
                block_states=states,
            )
        )
    stats = scheduler.make_stats()
    return SchedulerSnapshot(
        replica=replica,
        step=step,
        time=time.time(),
        num_running=stats.num_running,
        num_waiting=stats.num_waiting,
        kv_cache_usage=stats.kv_cache_usage,
        prefix_cache_queries=stats.prefix_cache_queries,
        prefix_cache_hits=stats.prefix_cache_hits,
        num_preemptions=stats.num_preemptions,
        kv_groups=groups,
        running=[_progress(r, manager) for r in scheduler.running[:MAX_LISTED_REQUESTS]],
        waiting=[_progress(r, manager) for r in _first(scheduler.waiting, MAX_LISTED_REQUESTS)],
    )


def _first(requests, limit: int) -> list[Request]:
    listed = []
    for request in requests:
        if len(listed) == limit:
            break
        listed.append(request)
    return listed


def _progress(request: Request, manager) -> RequestProgress:
    num_blocks = 0
    for group in manager.groups:
        if group.sliding_window is None:
            num_blocks += len(group.req_to_blocks.get(request.request_id, ()))
        else:  # dropped blocks stay in the list as the null block
            num_blocks += group.num_held_blocks(request.request_id)
    return RequestProgress(
        request_id=request.request_id,
        status=_STATUS_NAMES.get(request.status, "finished"),
        num_prompt_tokens=request.num_prompt_tokens,
        num_computed_tokens=request.num_computed_tokens,
        num_output_tokens=request.num_output_tokens,
        max_tokens=request.sampling_params.max_tokens or 0,
        num_blocks=num_blocks,
    )


__all__ = [
    "BLOCK_CACHED",
    "BLOCK_FREE",
    "BLOCK_IN_USE",
    "KVGroupSnapshot",
    "MAX_LISTED_REQUESTS",
    "RequestProgress",
    "SchedulerSnapshot",
    "take_snapshot",
]

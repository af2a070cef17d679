"""The JSON body of GET /engine/snapshot, from the cores' snapshots and the front end's counters.

Plain dicts, built in O(replicas + requests listed + history samples); the block states, a byte
per block, travel base64-encoded (`docs/web_console.md` describes every field).
"""

from __future__ import annotations

import base64
import dataclasses
import time

from pagedllm.core.snapshot import KVGroupSnapshot, RequestProgress, SchedulerSnapshot
from pagedllm.metrics_history import SAMPLE_INTERVAL_S

_COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "num_preemptions")


def snapshot_body(
    model: dict,
    snapshots: list[SchedulerSnapshot],
    replica_states: list | None,
    totals,
    history: list,
) -> dict:
    """`model`: the served model's facts; `replica_states`: `ReplicaState`s (None: one core,
    in this process); `totals`: `MetricTotals`; `history`: `HistorySample`s to send."""
    by_replica = {snapshot.replica: snapshot for snapshot in snapshots}
    states = replica_states or [None]
    replicas = []
    for index, state in enumerate(states):
        snapshot = by_replica.get(index)
        alive = state.alive if state is not None else True
        replica = {"replica": index, "alive": alive, "error": state.error if state is not None else None}
        if snapshot is not None and alive:
            replica |= _replica(snapshot)
        replicas.append(replica)
    live = [by_replica[r["replica"]] for r in replicas if r["alive"] and r["replica"] in by_replica]
    return {
        "time": time.time(),
        "model": model,
        "totals": {
            "num_running": sum(s.num_running for s in live),
            "num_waiting": sum(s.num_waiting for s in live),
            "kv_cache_usage": sum(s.kv_cache_usage for s in live) / len(live) if live else 0.0,
            **{name: sum(getattr(s, name) for s in live) for name in _COUNTERS},
            "prompt_tokens": totals.prompt_tokens,
            "generation_tokens": totals.generation_tokens,
            "requests_finished": totals.sequences_finished,
            "requests_aborted": totals.sequences_aborted,
        },
        "replicas": replicas,
        "history": {
            "interval_s": SAMPLE_INTERVAL_S,
            "samples": [dataclasses.asdict(sample) for sample in history],
        },
    }


def _replica(snapshot: SchedulerSnapshot) -> dict:
    return {
        "step": snapshot.step,
        "num_running": snapshot.num_running,
        "num_waiting": snapshot.num_waiting,
        "kv_cache_usage": snapshot.kv_cache_usage,
        **{name: getattr(snapshot, name) for name in _COUNTERS},
        "kv_groups": [_group(index, group) for index, group in enumerate(snapshot.kv_groups)],
        "running": [_request(r) for r in snapshot.running],
        "waiting": [_request(r) for r in snapshot.waiting],
    }


def _group(index: int, group: KVGroupSnapshot) -> dict:
    return {
        "group": index,
        "sliding_window": group.sliding_window,
        "num_blocks": group.num_blocks,
        "num_free": group.num_free,
        "num_in_use": group.num_in_use,
        "num_cached": group.num_cached,
        "block_states": base64.b64encode(group.block_states).decode("ascii"),
    }


def _request(request: RequestProgress) -> dict:
    return {
        "request_id": request.request_id,
        "status": request.status,
        "num_prompt_tokens": request.num_prompt_tokens,
        "num_computed_tokens": request.num_computed_tokens,
        "num_output_tokens": request.num_output_tokens,
        "max_tokens": request.max_tokens,
        "num_blocks": request.num_blocks,
    }

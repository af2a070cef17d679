"""The OpenAPI description of GET /engine/snapshot's body (documentation only: the route builds
plain dicts, `snapshot_view`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class SnapshotModel(_Doc):
    name: str
    max_model_len: int
    chat_template: bool = Field(description="false: the model has no chat template (completions only)")
    block_size: int
    device: str
    dtype: str
    data_parallel_size: int


class SnapshotTotals(_Doc):
    num_running: int
    num_waiting: int
    kv_cache_usage: float = Field(description="fraction of blocks held, fullest group, mean over replicas")
    prefix_cache_queries: int = Field(description="prompt tokens looked up in the prefix cache")
    prefix_cache_hits: int = Field(description="prompt tokens served from it")
    num_preemptions: int
    prompt_tokens: int
    generation_tokens: int
    requests_finished: int = Field(description="sequences ended by a stop or the length limit")
    requests_aborted: int = Field(description="sequences aborted (client gone, stopped)")


class KVGroupState(_Doc):
    group: int
    sliding_window: int | None
    num_blocks: int
    num_free: int
    num_in_use: int
    num_cached: int
    block_states: str = Field(
        description="base64 of num_blocks bytes; byte i is block id i + 1's state: "
        "0 free, 1 in use (held by requests), 2 cached (free, its prefix kept until reused)"
    )


class RequestState(_Doc):
    request_id: str
    status: Literal["running", "waiting", "preempted", "finished"]
    num_prompt_tokens: int
    num_computed_tokens: int
    num_output_tokens: int
    max_tokens: int
    num_blocks: int


class ReplicaSnapshot(_Doc):
    """A dead replica has only `replica`, `alive` and `error`."""

    replica: int
    alive: bool
    error: str | None
    step: int | None = None
    num_running: int | None = None
    num_waiting: int | None = None
    kv_cache_usage: float | None = None
    prefix_cache_queries: int | None = None
    prefix_cache_hits: int | None = None
    num_preemptions: int | None = None
    kv_groups: list[KVGroupState] | None = None
    running: list[RequestState] | None = Field(default=None, description="at most 256 listed")
    waiting: list[RequestState] | None = Field(default=None, description="at most 256 listed")


class HistorySampleDoc(_Doc):
    time: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    ttft_ms: float | None
    kv_cache_usage: float
    num_running: int
    num_waiting: int


class SnapshotHistory(_Doc):
    interval_s: float
    samples: list[HistorySampleDoc]


class EngineSnapshotResponse(_Doc):
    """GET /engine/snapshot: the engine's KV block pools, requests and recent history."""

    time: float
    model: SnapshotModel
    totals: SnapshotTotals
    replicas: list[ReplicaSnapshot]
    history: SnapshotHistory

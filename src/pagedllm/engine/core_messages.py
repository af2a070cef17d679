"""What crosses the seam between a front end and its engine core: token ids, never text.

A front end turns a user's prompt into one `EngineCoreRequest` per sample; the core answers
each step with one `EngineCoreOutputs`. Both are msgspec structs (field order is the wire
schema, `pagedllm.engine.wire.SCHEMA_VERSION`), so the same values travel unchanged within
a process or across one.
"""

from __future__ import annotations

import msgspec

from pagedllm.core.sched_output import EngineCoreOutput
from pagedllm.core.scheduler import SchedulerStats
from pagedllm.core.snapshot import SchedulerSnapshot
from pagedllm.sampling_params import SamplingParams


class EngineCoreRequest(msgspec.Struct, array_like=True, omit_defaults=True):
    """One sequence for the core to generate: a validated prompt and how to sample it.

    `max_tokens` in `sampling_params` is already resolved (never None). For n > 1 the front end
    sends n requests; `prefix_leader_id` names the sibling whose prompt blocks this one waits
    to share.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    cache_salt: str | None = None
    prefix_leader_id: str | None = None


class RejectedRequest(msgspec.Struct, array_like=True):
    """A request the core refused; `param` names the offending field. `status` 429: refused
    for load (a full queue, or too long a wait in it), not for what it asks."""

    request_id: str
    param: str
    message: str
    status: int = 400


class LostRequest(msgspec.Struct, array_like=True):
    """A request that ended because the engine core serving it died while others live on."""

    request_id: str
    message: str


class EngineCoreOutputs(msgspec.Struct, array_like=True, omit_defaults=True):
    """One step's results: new tokens per request, the scheduler's counters, refusals.

    `lost` is filled by a client in front of several cores (data parallel) when one of them
    dies: its requests end there, the client goes on with the others. A core never sets it.
    `snapshots` answers a `RequestSnapshot`: the core's own, or one per replica once merged.
    """

    outputs: list[EngineCoreOutput] = msgspec.field(default_factory=list)
    stats: SchedulerStats | None = None
    rejected: list[RejectedRequest] = msgspec.field(default_factory=list)
    lost: list[LostRequest] = msgspec.field(default_factory=list)
    snapshots: list[SchedulerSnapshot] = msgspec.field(default_factory=list)


class EngineCoreInfo(msgspec.Struct, array_like=True):
    """What a front end needs to know about its core once the core has sized its KV cache."""

    max_model_len: int
    num_kv_blocks: int  # the longest request every KV-cache group can hold, in blocks
    block_size: int
    device: str
    dtype: str
    # Cores the server's threads should keep to, where the core pinned its own threads (empty:
    # nothing pinned; Platform.pin_engine_core_threads).
    frontend_cores: list[int] = []

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

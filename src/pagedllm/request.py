"""The core's view of one sequence being generated (no torch, no text)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from pagedllm.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    """Lifecycle of a request inside the scheduler."""

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {
            RequestStatus.FINISHED_STOPPED: "stop",
            RequestStatus.FINISHED_LENGTH: "length",
            RequestStatus.FINISHED_ABORTED: "abort",
        }.get(self)


@dataclass(eq=False)
class Request:
    """One sequence: its tokens, how many of them have KV in the cache, and its state.

    `num_tokens - num_computed_tokens` is all the scheduler needs to know: a prompt
    being prefilled, a chunk of it, or one decode token are the same rule.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.time)
    # Extra keys mixed into every block hash (e.g. a cache salt) so that requests
    # that must not share KV never get a prefix hit on each other.
    cache_salt: str | None = None
    # For n > 1: the sibling whose prompt blocks this request waits to share.
    prefix_leader: Request | None = None
    # Constrained decoding: a future of the compiled grammar (opaque here). The scheduler admits
    # the request once it is done, without holding up the requests behind it.
    grammar: Any = None

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Prompt tokens served from the prefix cache the first time this request was scheduled.
    num_cached_tokens: int = -1
    num_preemptions: int = 0
    # Wall-clock time (time.time()) the scheduler first gave this request tokens to compute.
    first_scheduled_time: float | None = None
    stop_reason: int | str | None = None
    # Chained hashes of this request's full blocks, filled in by the KV cache manager.
    block_hashes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def max_tokens(self) -> int:
        """Upper bound on output tokens (the engine resolves None to the context left)."""
        assert self.sampling_params.max_tokens is not None, "engine must resolve max_tokens"
        return self.sampling_params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def grammar_pending(self) -> bool:
        """Its grammar is still compiling: not schedulable yet."""
        return self.grammar is not None and not self.grammar.done()

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

"""Messages between the scheduler (core) and the model runner (worker); plain data, no torch.

`TokenLogprobs` and `EngineCoreOutput` also leave the engine core for its front end, possibly
in another process: they are msgspec structs encoded as arrays (field order is the wire
schema, versioned in `pagedllm.engine.wire`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    """A request the runner has not seen (or sees again after preemption): all it needs."""

    request_id: str
    token_ids: list[int]  # prompt + outputs so far (a resumed request recomputes them)
    num_prompt_tokens: int
    sampling_params: SamplingParams
    # The whole block table, one list per KV-cache group (id 0: a sliding window's dropped block).
    block_ids: tuple[list[int], ...]
    num_computed_tokens: int  # tokens whose KV is already cached (prefix hit)
    # Constrained decoding: the compiled grammar (opaque here), for the runner's matcher.
    grammar: object = None


@dataclass(slots=True)
class CachedRequestData:
    """A request the runner already holds: only what changed since its last step."""

    request_id: str
    # Per KV-cache group: ids appended to the request's table. Blocks a sliding group drops are
    # not reported; the runner never reads entries before a query's window.
    new_block_ids: tuple[list[int], ...]
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    """What one engine step computes.

    For every scheduled request the runner computes `num_scheduled_tokens[id]` tokens
    starting at position `num_computed_tokens`. The runner samples a token for a
    request only when the step reaches the end of its known tokens.
    """

    scheduled_new_reqs: list[NewRequestData] = field(default_factory=list)
    scheduled_cached_reqs: list[CachedRequestData] = field(default_factory=list)
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    total_num_scheduled_tokens: int = 0
    # Requests that left the running set since the last step; the runner drops their state.
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


class TokenLogprobs(msgspec.Struct, array_like=True, gc=False):
    """Logprobs for some positions: row i holds the chosen token first, then the top-k.

    token_ids[i][0] is the chosen (sampled or prompt) token, token_ids[i][1:] the top-k;
    ranks[i] is the chosen token's rank in the vocabulary (1 = most likely).
    """

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]


@dataclass
class ModelRunnerOutput:
    """Results of one step, per scheduled request."""

    # Requests that sampled this step -> the sampled token ids (one today; lists leave room
    # for speculative decoding). Partial prefill chunks are absent.
    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    # Prompt logprobs computed this step: request id -> (first prompt position covered, values).
    # Position p's entry is the logprob of prompt token p (p >= 1) given tokens < p.
    prompt_logprobs: dict[str, tuple[int, TokenLogprobs]] = field(default_factory=dict)
    # Requests whose grammar terminated with this step's token: nothing more may follow.
    stopped_by_grammar: set[str] = field(default_factory=set)


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What the core reports about one request after a step: token ids, never text."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: TokenLogprobs | None = None
    new_prompt_logprobs: tuple[int, TokenLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    first_scheduled_time: float | None = None  # when the scheduler first ran the request

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

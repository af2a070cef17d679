"""Continuous batching under a token budget, with chunked prefill and preemption by recompute."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence

import msgspec

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)
from pagedllm.request import Request, RequestStatus


class SchedulerStats(msgspec.Struct, array_like=True, gc=False):
    """A snapshot of the scheduler's load and cache counters (prefix counters in tokens)."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


class Scheduler:
    """Decides, each step, which requests compute how many tokens.

    A request is just `num_computed_tokens` vs `num_tokens`: prefill, a chunk of it and a
    decode step are the same rule. Running requests are served first, in arrival order;
    when blocks run out the newest running request is preempted (its KV dropped, to be
    recomputed later). Waiting requests are admitted FCFS while budget and seats remain.
    """

    def __init__(
        self,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        num_kv_blocks: int | Sequence[KVCacheGroupSpec],
        hash_seed: bytes | None = None,
    ):
        """`num_kv_blocks`: a block count (one full-attention group) or one spec per KV-cache group."""
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.kv_cache_manager = KVCacheManager(
            num_kv_blocks, cache_config.block_size, cache_config.enable_prefix_caching, hash_seed
        )
        self.requests: dict[str, Request] = {}  # every unfinished request
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        # Finished/aborted since the last schedule(); the runner drops their state.
        self._finished_req_ids: set[str] = set()

    def add_request(self, request: Request) -> None:
        """Queue a request (FCFS) after checking it can ever be served."""
        self._validate(request)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def _validate(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        if request.num_prompt_tokens < 1:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        total = request.num_prompt_tokens + request.max_tokens
        max_len = self.scheduler_config.max_model_len
        if total > max_len:
            raise ValueError(
                f"request {request.request_id!r}: prompt ({request.num_prompt_tokens} tokens) + "
                f"max_tokens ({request.max_tokens}) = {total} exceeds max_model_len ({max_len})"
            )
        block_size = self.cache_config.block_size
        max_chunk = self.scheduler_config.max_num_batched_tokens
        for spec in self.kv_cache_manager.specs:
            need = spec.max_blocks_per_request(total, block_size, max_chunk)
            if need > spec.num_blocks:
                kind = "" if spec.sliding_window is None else f" (sliding window {spec.sliding_window})"
                raise ValueError(
                    f"request {request.request_id!r}: prompt + max_tokens = {total} tokens need "
                    f"{need} KV blocks of {block_size} tokens, but the KV cache{kind} only has "
                    f"{spec.num_blocks} blocks ({spec.num_blocks * block_size} tokens)"
                )

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests and token counts and allocate their blocks."""
        output = SchedulerOutput()
        budget = self.scheduler_config.max_num_batched_tokens
        budget = self._schedule_running(output, budget)
        if not output.preempted_req_ids:
            self._schedule_waiting(output, budget)
        output.total_num_scheduled_tokens = sum(output.num_scheduled_tokens.values())
        output.finished_req_ids = self._finished_req_ids
        self._finished_req_ids = set()
        return output

    def _schedule_running(self, output: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:
                i += 1  # nothing to compute until the runner reports its token
                continue
            new_block_ids = self._allocate_or_preempt(request, num_new, output)
            if new_block_ids is None:
                break  # the request preempted itself: no blocks left for anyone after it
            output.scheduled_cached_reqs.append(
                CachedRequestData(request.request_id, new_block_ids, request.num_computed_tokens)
            )
            output.num_scheduled_tokens[request.request_id] = num_new
            budget -= num_new
            i += 1
        return budget

    def _allocate_or_preempt(self, request: Request, num_new: int, out: SchedulerOutput) -> list[int] | None:
        """Allocate, preempting the newest running requests until it fits (None: preempted itself).

        The newest request is always at or after `request` in the running list, so a request
        already scheduled this step is never preempted.
        """
        while True:
            new_block_ids = self.kv_cache_manager.allocate_slots(request, num_new)
            if new_block_ids is not None:
                return new_block_ids
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted_req_ids.add(victim.request_id)
            if victim is request:
                return None

    def _preempt(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        # Victims are popped newest first, so pushing each to the front keeps arrival order.
        self.waiting.appendleft(request)

    def _schedule_waiting(self, output: SchedulerOutput, budget: int) -> None:
        # Followers waiting for their leader's prompt blocks, and requests whose grammar compiles.
        skipped: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.scheduler_config.max_num_seqs:
            request = self.waiting[0]
            if request.grammar_pending or self._must_wait_for_leader(request):
                skipped.append(self.waiting.popleft())
                continue
            num_new = self._admit(request, budget)
            if num_new is None:
                break  # out of blocks: later requests must not overtake this one
            self.waiting.popleft()
            self.running.append(request)
            output.scheduled_new_reqs.append(self._new_request_data(request))
            output.num_scheduled_tokens[request.request_id] = num_new
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    def _admit(self, request: Request, budget: int) -> int | None:
        """Look up the prefix cache and allocate; returns the tokens scheduled, or None."""
        hit_blocks, num_hit = [], 0
        if request.num_computed_tokens == 0:
            hit_blocks, num_hit = self.kv_cache_manager.get_computed_blocks(request)
        num_new = min(request.num_tokens - request.num_computed_tokens - num_hit, budget)
        if self.kv_cache_manager.allocate_slots(request, num_new, hit_blocks, num_hit) is None:
            return None
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens += num_hit
        if request.first_scheduled_time is None:
            request.first_scheduled_time = time.time()
        if request.num_cached_tokens < 0:
            request.num_cached_tokens = num_hit
        return num_new

    def _must_wait_for_leader(self, request: Request) -> bool:
        """An n>1 sibling waits until its leader's prompt is in the cache, then hits on it.

        Only while the leader is making progress (waiting or running its prefill); a
        finished or preempted leader is never waited on, so this cannot deadlock.
        """
        leader = request.prefix_leader
        if leader is None or not self.kv_cache_manager.can_use_prefix_cache(request):
            return False
        in_progress = leader.status in (RequestStatus.WAITING, RequestStatus.RUNNING)
        return in_progress and leader.num_computed_tokens < leader.num_prompt_tokens

    def _new_request_data(self, request: Request) -> NewRequestData:
        grammar = request.grammar.result() if request.grammar is not None else None
        return NewRequestData(
            request_id=request.request_id,
            token_ids=list(request.all_token_ids),
            num_prompt_tokens=request.num_prompt_tokens,
            sampling_params=request.sampling_params,
            block_ids=self.kv_cache_manager.get_block_ids(request),
            num_computed_tokens=request.num_computed_tokens,
            grammar=grammar,
        )

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        """Advance computed tokens, append sampled tokens, apply stop rules, free finished requests."""
        outputs: list[EngineCoreOutput] = []
        for req_id, num_scheduled in scheduler_output.num_scheduled_tokens.items():
            request = self.requests.get(req_id)
            if request is None or request.status != RequestStatus.RUNNING:
                continue  # aborted or stopped from outside after it was scheduled
            request.num_computed_tokens += num_scheduled
            # Sliding-window blocks the next query cannot see go back to the pool right away.
            self.kv_cache_manager.remove_skipped_blocks(request)
            new_token_ids = []
            for token_id in runner_output.sampled_token_ids.get(req_id, ()):
                request.append_output_token(token_id)
                new_token_ids.append(token_id)
                if self._check_stop(request, token_id):
                    break
            if req_id in runner_output.stopped_by_grammar and not request.is_finished:
                # The grammar accepted a stop token that EOS rules did not stop on (ignore_eos).
                request.status = RequestStatus.FINISHED_STOPPED
            if new_token_ids or req_id in runner_output.prompt_logprobs:
                outputs.append(self._make_output(request, new_token_ids, runner_output))
            if request.is_finished:
                self._release(request)
        self.running = [r for r in self.running if not r.is_finished]
        return outputs

    def _check_stop(self, request: Request, token_id: int) -> bool:
        """Set a finished status if this token ends the request: EOS, stop token, then length."""
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            is_eos = not params.ignore_eos and token_id == request.eos_token_id
            if is_eos or token_id in params._all_stop_token_ids or token_id in params.stop_token_ids:
                request.status = RequestStatus.FINISHED_STOPPED
                request.stop_reason = None if is_eos else token_id
                return True
        max_len = self.scheduler_config.max_model_len
        if request.num_output_tokens >= request.max_tokens or request.num_tokens >= max_len:
            request.status = RequestStatus.FINISHED_LENGTH
            return True
        return False

    def _make_output(self, request: Request, tokens: list[int], out: ModelRunnerOutput) -> EngineCoreOutput:
        return EngineCoreOutput(
            request_id=request.request_id,
            new_token_ids=tokens,
            new_logprobs=out.logprobs.get(request.request_id) if tokens else None,
            new_prompt_logprobs=out.prompt_logprobs.get(request.request_id),
            finish_reason=request.status.finish_reason,
            stop_reason=request.stop_reason,
            num_cached_tokens=max(request.num_cached_tokens, 0),
            first_scheduled_time=request.first_scheduled_time,
        )

    def finish_requests(self, request_ids: str | Iterable[str], status: RequestStatus) -> None:
        """Abort, or stop from outside (a matched stop string), requests in any state.

        Unknown or already finished ids are ignored. Blocks are freed immediately.
        """
        if not status.is_finished:
            raise ValueError(f"finish_requests needs a finished status, got {status.name}")
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        to_finish = [self.requests[i] for i in dict.fromkeys(ids) if i in self.requests]
        for request in to_finish:
            request.status = status  # marks them for the two filters below
        self.running = [r for r in self.running if not r.is_finished]
        self.waiting = deque(r for r in self.waiting if not r.is_finished)
        for request in to_finish:
            self._release(request)

    def _release(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        del self.requests[request.request_id]
        self._finished_req_ids.add(request.request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV blocks held by requests (free cached blocks excluded)."""
        return self.kv_cache_manager.usage

    def reset_prefix_cache(self) -> bool:
        """Forget cached prefixes; only possible while no request holds blocks."""
        return self.kv_cache_manager.reset_prefix_cache()

    def make_stats(self) -> SchedulerStats:
        """Counters for metrics and logging."""
        return SchedulerStats(
            num_running=self.num_running,
            num_waiting=self.num_waiting,
            kv_cache_usage=self.kv_cache_usage,
            prefix_cache_queries=self.kv_cache_manager.prefix_cache_queries,
            prefix_cache_hits=self.kv_cache_manager.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
        )

"""Shared builders for the core tests: requests and tiny schedulers."""

from __future__ import annotations

import itertools

import pytest

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from pagedllm.core.scheduler import Scheduler
from pagedllm.request import Request
from pagedllm.sampling_params import SamplingParams

SEED = b"test-seed"


@pytest.fixture
def make_request():
    """Build a Request: make_request(prompt, max_tokens=..., id=..., any SamplingParams field)."""
    counter = itertools.count()

    def build(prompt, max_tokens=8, request_id=None, eos_token_id=None, cache_salt=None, **params):
        return Request(
            request_id=request_id if request_id is not None else f"r{next(counter)}",
            prompt_token_ids=list(prompt),
            sampling_params=SamplingParams(max_tokens=max_tokens, **params),
            eos_token_id=eos_token_id,
            cache_salt=cache_salt,
        )

    return build


@pytest.fixture
def make_scheduler():
    """Build a Scheduler over `num_blocks` blocks of `block_size` tokens (defaults: 10 x 4).

    `windows` (e.g. [None, 6]) makes one KV-cache group per entry, each with `num_blocks` blocks.
    """

    def build(
        num_blocks=10,
        block_size=4,
        max_num_seqs=16,
        max_num_batched_tokens=64,
        max_model_len=64,
        enable_prefix_caching=True,
        windows=None,
    ):
        groups = num_blocks if windows is None else [KVCacheGroupSpec(w, num_blocks) for w in windows]
        return Scheduler(
            SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                max_model_len=max_model_len,
            ),
            CacheConfig(block_size=block_size, enable_prefix_caching=enable_prefix_caching),
            num_kv_blocks=groups,
            hash_seed=SEED,
        )

    return build


def next_token_by_length(request_id: str, token_ids: list[int]) -> int:
    """Default fake sampler: the token is 1000 + the sequence length (easy to predict)."""
    return 1000 + len(token_ids)


class FakeRunner:
    """A model runner stand-in that checks the scheduler protocol and the KV contents.

    It keeps each request's tokens and one block table per KV-cache group from
    NewRequestData/CachedRequestData, and a fake KV cache per group where slot (block, offset)
    holds the token prefix ending at that position: a step first writes the slots of every
    scheduled token, then checks that every context slot each scheduled request can attend to
    holds exactly its own prefix (so a wrong prefix hit, a lost block, a block a sliding
    window dropped too early or a shared partial block is caught). For a sliding group only
    positions inside the window of the step's first query are checked: older ones may be gone.
    """

    def __init__(self, block_size: int, next_token=next_token_by_length, windows=(None,)):
        self.block_size = block_size
        self.next_token = next_token
        self.windows = list(windows)
        self.states: dict[str, dict] = {}
        self.kv: dict[tuple[int, int, int], tuple[int, ...]] = {}

    def first_visible(self, group: int, position: int) -> int:
        """The first position a query at `position` (or later) may attend to in this group."""
        window = self.windows[group]
        return 0 if window is None else max(position - window + 1, 0)

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        self._apply(out)
        bs = self.block_size
        for rid, n in out.num_scheduled_tokens.items():
            st = self.states[rid]
            assert st["computed"] + n <= len(st["tokens"]), "scheduled past the known tokens"
            for g, blocks in enumerate(st["blocks"]):
                assert len(blocks) * bs >= st["computed"] + n, "block table too short"
                for p in range(st["computed"], st["computed"] + n):
                    assert blocks[p // bs] != 0, "a new token's slot is in the null block"
                    self.kv[(g, blocks[p // bs], p % bs)] = tuple(st["tokens"][: p + 1])
        for rid, n in out.num_scheduled_tokens.items():
            st = self.states[rid]
            for g, blocks in enumerate(st["blocks"]):
                for p in range(self.first_visible(g, st["computed"]), st["computed"] + n):
                    assert self.kv.get((g, blocks[p // bs], p % bs)) == tuple(st["tokens"][: p + 1])
        sampled = {}
        for rid, n in out.num_scheduled_tokens.items():
            st = self.states[rid]
            st["computed"] += n
            if st["computed"] == len(st["tokens"]):
                token = self.next_token(rid, st["tokens"])
                st["tokens"].append(token)
                sampled[rid] = [token]
        return ModelRunnerOutput(sampled_token_ids=sampled)

    def _apply(self, out: SchedulerOutput) -> None:
        for rid in out.finished_req_ids | out.preempted_req_ids:
            self.states.pop(rid, None)
        for new in out.scheduled_new_reqs:
            assert new.request_id not in self.states, "NewRequestData for a request the runner holds"
            assert len(new.block_ids) == len(self.windows)
            self.states[new.request_id] = {
                "tokens": list(new.token_ids),
                "blocks": [list(ids) for ids in new.block_ids],
                "computed": new.num_computed_tokens,
            }
        for cached in out.scheduled_cached_reqs:
            st = self.states[cached.request_id]
            assert st["computed"] == cached.num_computed_tokens
            for blocks, new_ids in zip(st["blocks"], cached.new_block_ids, strict=True):
                blocks.extend(new_ids)

    def step(self, scheduler: Scheduler) -> tuple[SchedulerOutput, list[EngineCoreOutput]]:
        """One engine step: schedule, execute, update."""
        out = scheduler.schedule()
        return out, scheduler.update_from_output(out, self.execute(out))


@pytest.fixture
def make_runner():
    """Build a FakeRunner: make_runner(block_size=4, next_token=fn(request_id, tokens), windows=(None,))."""

    def build(block_size=4, next_token=next_token_by_length, windows=(None,)):
        return FakeRunner(block_size, next_token, windows)

    return build

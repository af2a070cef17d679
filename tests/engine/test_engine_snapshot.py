"""Engine snapshots (the web console's engine view) through every client: a core in this process,
one in its own process, and two data-parallel replicas. Tiny random Llama, float32.

While a request runs its core lists it with its progress and blocks in use; once it is done its
blocks are free again, the full ones cached.
"""

from __future__ import annotations

import asyncio

import pytest

from pagedllm.config import EngineConfig
from pagedllm.core.block_pool import BLOCK_IN_USE
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.sampling_params import SamplingParams

BLOCK_SIZE = 8
NUM_BLOCKS = 64
PROMPT = list(range(3, 43))  # 40 tokens: 5 full blocks


@pytest.fixture(
    scope="module",
    params=[("inproc", 1), ("engine process", 1), ("two replicas", 2)],
    ids=["inproc", "engine-process", "dp2"],
)
def llm(request, tiny_llama_dir):
    kind, replicas = request.param
    config = EngineConfig(
        model=str(tiny_llama_dir),
        dtype="float32",
        num_kv_blocks=NUM_BLOCKS,
        block_size=BLOCK_SIZE,
        data_parallel_size=replicas,
    )
    engine = AsyncLLM(config, engine_process=kind != "inproc")
    yield engine
    engine.shutdown()


async def _snapshot_while_running(llm: AsyncLLM):
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    during = None
    async for _ in llm.generate({"prompt_token_ids": PROMPT}, params, "snap-req"):
        if during is None:  # the first token is out: the request is running
            during = await llm.engine_snapshots(timeout=5.0)
    after = await llm.engine_snapshots(timeout=5.0)
    return during, after


def test_snapshot_shows_the_running_request_then_free_and_cached_blocks(llm):
    num_replicas = llm.engine.config.data_parallel_size
    during, after = asyncio.run(_snapshot_while_running(llm))
    assert [s.replica for s in during] == list(range(num_replicas))
    listed = [(s.replica, r) for s in during for r in s.running]
    assert len(listed) == 1, f"one request runs, the snapshots list {listed}"
    replica, progress = listed[0]
    assert progress.request_id.startswith("snap-req")
    assert progress.status == "running"
    assert progress.num_prompt_tokens == len(PROMPT)
    assert progress.num_computed_tokens >= len(PROMPT)
    assert 1 <= progress.num_output_tokens <= 60 and progress.max_tokens == 60
    (group,) = during[replica].kv_groups
    assert group.num_blocks == NUM_BLOCKS and len(group.block_states) == NUM_BLOCKS
    assert group.num_in_use == progress.num_blocks >= len(PROMPT) // BLOCK_SIZE
    assert group.block_states.count(BLOCK_IN_USE) == group.num_in_use
    assert during[replica].num_running == 1

    # Done: nothing held; the prompt's and output's full blocks stay cached for a prefix hit.
    done = after[replica]
    assert done.step > during[replica].step
    (group,) = done.kv_groups
    assert (done.num_running, group.num_in_use) == (0, 0)
    assert group.num_cached >= (len(PROMPT) + 59) // BLOCK_SIZE
    assert group.num_free + group.num_cached == NUM_BLOCKS


def test_concurrent_callers_share_one_round(llm):
    async def many():
        return await asyncio.gather(*(llm.engine_snapshots(timeout=5.0) for _ in range(20)))

    rounds = asyncio.run(many())
    steps = {tuple(s.step for s in snapshots) for snapshots in rounds}
    # An idle core answers at once and its step counter does not move: one picture for all.
    assert len(steps) == 1
    assert all(len(snapshots) == llm.engine.config.data_parallel_size for snapshots in rounds)

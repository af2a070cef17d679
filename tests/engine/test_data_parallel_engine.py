"""Offline data parallelism: `LLM(..., data_parallel_size=2)` gives one engine's outputs.

Two replica processes behind the router, tiny random Llama in float32: greedy tokens and
logprobs of a batch equal one engine's (near-tie rule), n = 2 seeded samples stay together on
one replica and equal one engine's, and a rerun finds its prompts cached where they went.
"""

from __future__ import annotations

import pytest
import torch

import tiny_models
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.llama_config(), tmp_path_factory.mktemp("dp-llama"), seed=3)


def run(folder, data_parallel_size: int, prompts, tensor_parallel_size: int = 1):
    llm = LLM(
        str(folder),
        dtype="float32",
        data_parallel_size=data_parallel_size,
        tensor_parallel_size=tensor_parallel_size,
        num_kv_blocks=96,
        block_size=4,
        max_num_batched_tokens=32,
    )
    try:
        batch = [{"prompt_token_ids": p} for p in prompts]
        greedy = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2)
        first = llm.generate(batch, greedy)
        rerun = llm.generate(batch, greedy)
        sampled = llm.generate(
            batch[:2], SamplingParams(n=2, temperature=1.0, seed=7, max_tokens=NUM_TOKENS, ignore_eos=True)
        )
        states = llm.engine.client.replica_states()
    finally:
        llm.engine.shutdown()
    return first, rerun, sampled, states


def top2(completion):
    return [
        [(t, v.logprob) for _, t, v in sorted((v.rank, t, v) for t, v in lp.items() if v.rank in (1, 2))]
        for lp in completion.logprobs
    ]


def six_prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [
        torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in (6, 19, 27, 41, 12, 33)
    ]


@pytest.fixture(scope="module")
def one_engine(folder):
    one, one_rerun, one_sampled, states = run(folder, 1, six_prompts())
    assert states is None  # a single core reports no replicas
    return one, one_rerun, one_sampled


@pytest.mark.parametrize("tp", [1, 2], ids=["dp2", "dp2-tp2"])
def test_two_replicas_generate_what_one_engine_does(folder, one_engine, tp):
    """Each replica may itself be tensor-parallel (then two processes per replica)."""
    prompts = six_prompts()
    one, one_rerun, one_sampled = one_engine
    two, two_rerun, two_sampled, states = run(folder, 2, prompts, tensor_parallel_size=tp)
    for i in range(len(prompts)):
        reference = one[i].outputs[0]
        for label, outputs in (("batch", two), ("rerun", two_rerun)):
            assert_greedy_match(
                outputs[i].outputs[0].token_ids, reference.token_ids, top2(reference), label=f"{label} [{i}]"
            )
        # The rerun went where the prompt was cached: every full block hit.
        assert two_rerun[i].num_cached_tokens == one_rerun[i].num_cached_tokens > 0
    for ours, theirs in zip(two_sampled, one_sampled):
        assert [c.token_ids for c in ours.outputs] == [c.token_ids for c in theirs.outputs]
    assert [s.alive for s in states] == [True, True]
    assert all(s.num_routed > 0 and s.generation_tokens > 0 for s in states), states
    assert all(s.load_tokens == 0 and s.num_requests == 0 for s in states), states

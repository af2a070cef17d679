"""CUDA graphs (the default) against eager steps (`enforce_eager=True`) on the same weights.

Batches of 1, 3 and 17 requests with prompts of different lengths and different `max_tokens`,
so decode steps shrink as requests finish and replay graphs of many captured sizes, padded
ones included (17 decodes replay the graph of 24). In float32 the greedy tokens must be
identical and logprobs within 1e-4; in bf16 (the default dtype) tokens may part only at a
near-tie of the eager run and logprobs agree to 0.05 until then.
"""

from __future__ import annotations

import pytest
from gpu_models import block_size_for, random_prompts

from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

pytestmark = pytest.mark.gpu

BATCHES = [1, 3, 17]
BF16_NEAR_TIE = 0.15


def engines(folder, kind: str, dtype: str) -> tuple[LLM, LLM]:
    settings = dict(
        device="cuda", dtype=dtype, num_kv_blocks=512, block_size=block_size_for(kind), max_num_seqs=32
    )
    graphs = LLM(str(folder), **settings)
    eager = LLM(str(folder), enforce_eager=True, **settings)
    # The runner's compiled step is what replays the graphs; eager engines have none.
    assert getattr(graphs.engine.engine_core.executor.runner.compiled_step, "name", None) == "cuda_graphs"
    assert eager.engine.engine_core.executor.runner.compiled_step is None
    return graphs, eager


def requests(n: int):
    prompts = random_prompts([5 + (7 * i) % 36 for i in range(n)], seed=n)
    params = [
        SamplingParams(temperature=0.0, max_tokens=4 + 3 * (i % 5), ignore_eos=True, logprobs=2)
        for i in range(n)
    ]
    return [{"prompt_token_ids": p} for p in prompts], params


def top2(completion) -> list[list[tuple[int, float]]]:
    """Each step's top two (id, logprob), best first, as numerics.py takes them."""
    steps = []
    for lp in completion.logprobs:
        ranked = sorted((v.rank, t, v.logprob) for t, v in lp.items() if v.rank in (1, 2))
        steps.append([(t, logprob) for _, t, logprob in ranked])
    return steps


def chosen(completion) -> list[float]:
    return [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_float32_graphs_equal_eager(kind, tiny_dirs):
    graphs, eager = engines(tiny_dirs(kind), kind, "float32")
    for n in BATCHES:
        prompts, params = requests(n)
        replayed = graphs.generate(prompts, params)
        stepped = eager.generate(prompts, params)
        for i, (a, b) in enumerate(zip(replayed, stepped)):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids, f"{kind} batch {n} [{i}]"
            assert chosen(a.outputs[0]) == pytest.approx(chosen(b.outputs[0]), abs=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_bf16_graphs_match_eager(kind, tiny_dirs):
    graphs, eager = engines(tiny_dirs(kind), kind, "bfloat16")
    for n in BATCHES:
        prompts, params = requests(n)
        for i, (a, b) in enumerate(zip(graphs.generate(prompts, params), eager.generate(prompts, params))):
            ours, reference = a.outputs[0], b.outputs[0]
            label = f"{kind} bf16 batch {n} [{i}]"
            identical = assert_greedy_match(
                ours.token_ids, reference.token_ids, top2(reference), near_tie=BF16_NEAR_TIE, label=label
            )
            agree = (
                len(ours.token_ids) if identical else _first_difference(ours.token_ids, reference.token_ids)
            )
            assert chosen(ours)[:agree] == pytest.approx(chosen(reference)[:agree], abs=0.05), label


def _first_difference(a: list[int], b: list[int]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)

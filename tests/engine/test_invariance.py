"""A request's greedy output must not depend on what else the engine is doing.

Each of 16 mixed-length prompts (at least two full blocks each) must give the same greedy
tokens (a) alone, (b) in one batch, (c) under a 32-token budget (chunked prefill), (d) with so
few KV blocks that preemption happens, and (e) on a rerun that hits the prefix cache.
"""

from __future__ import annotations

import pytest
import torch

from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.engine.tokenizer import load_tokenizer
from pagedllm.model.loader.resolve import resolve_model

MAX_TOKENS = 16
BLOCK = 16


def _params():
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)


def _top2(completion):
    return [
        sorted(((t, lp.logprob) for t, lp in pos.items() if lp.rank in (1, 2)), key=lambda x: -x[1])
        for pos in completion.logprobs
    ]


def _check_same(reference_outputs, outputs, label):
    for i, (ref, out) in enumerate(zip(reference_outputs, outputs)):
        ref_c, out_c = ref.outputs[0], out.outputs[0]
        assert_greedy_match(
            out_c.token_ids,
            ref_c.token_ids,
            _top2(ref_c),
            [[t for t, _ in p] for p in _top2(out_c)],
            f"{label}[{i}]",
        )


def _run_invariance(model: str, prompts: list, num_kv_blocks_small: int, **kwargs):
    prompts = [{"prompt_token_ids": p} for p in prompts]
    params = _params()
    roomy = dict(dtype="float32", block_size=BLOCK, num_kv_blocks=256, **kwargs)

    llm = LLM(model, enable_prefix_caching=False, **roomy)
    alone = [llm.generate([p], params)[0] for p in prompts]
    batch = llm.generate(prompts, params)
    _check_same(alone, batch, "batch")

    chunked = LLM(model, enable_prefix_caching=False, max_num_batched_tokens=32, **roomy).generate(
        prompts, params
    )
    _check_same(alone, chunked, "chunked")

    small = LLM(model, dtype="float32", block_size=BLOCK, num_kv_blocks=num_kv_blocks_small, **kwargs)
    preempted = small.generate(prompts, params)
    assert small.engine.engine_core.scheduler.num_preemptions > 0, (
        "the small cache was meant to force preemption"
    )
    _check_same(alone, preempted, "preempted")

    cached = LLM(model, enable_prefix_caching=True, **roomy)
    first = cached.generate(prompts, params)
    rerun = cached.generate(prompts, params)
    for prompt, out in zip(prompts, rerun):
        full_blocks = (len(prompt["prompt_token_ids"]) - 1) // BLOCK
        assert out.num_cached_tokens == full_blocks * BLOCK >= 2 * BLOCK
    _check_same(alone, first, "prefix-first")
    _check_same(alone, rerun, "prefix-hit")


def test_invariance_tiny_llama(tiny_llama_dir):
    gen = torch.Generator().manual_seed(7)
    lengths = [33 + 5 * i for i in range(16)]
    prompts = [torch.randint(3, 512, (n,), generator=gen).tolist() for n in lengths]
    # 10 blocks of 16 hold a couple of these requests at a time, never all 16.
    _run_invariance(str(tiny_llama_dir), prompts, num_kv_blocks_small=10)


@pytest.mark.slow
def test_invariance_smollm2():
    llm_tok = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    sentences = [
        "The history of the printing press begins in the fifteenth century.",
        "Rivers carve valleys over millions of years while mountains rise.",
        "A good recipe for bread needs flour, water, salt and patience.",
        "In mathematics, a prime number has exactly two divisors.",
    ]
    prompts = []
    for i in range(16):
        text = " ".join(sentences[(i + j) % 4] for j in range(3 + i % 4))
        ids = llm_tok(text).input_ids
        assert len(ids) >= 2 * BLOCK + 1
        prompts.append(ids)
    _run_invariance("smollm2-135m-instruct", prompts, num_kv_blocks_small=14)

"""Gemma 3 through `LLM`: equal to transformers, and sliding layers hold only their window.

A tiny Gemma 3 (layers 0, 1, 3 slide over 8 positions, layer 2 is global; one KV head of
size 24) runs prompts of 5 to 48 tokens with 4-token blocks, so every sliding layer drops
blocks while the full layer keeps them all. Greedy tokens and their logprobs, and prompt
logprobs, must match transformers run one prompt at a time: in one batch, with chunked
prefill, and with the prefix cache on (a rerun that hits it) as with it off.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from hf_reference import hf_greedy, hf_prompt_logprobs, top2_gaps
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 32
PROMPT_LENS = [5, 17, 33, 48]
BLOCK = 4
WINDOW = 8


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """(checkpoint folder, prompts, transformers' (greedy, top-2, chosen) and prompt logprobs)."""
    folder = tiny_models.save_tiny(
        tiny_models.gemma3_config(), tmp_path_factory.mktemp("tiny-gemma3"), seed=5
    )
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(17)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    greedy = [hf_greedy(reference, p, NUM_TOKENS) for p in prompts]
    prompt_logprobs = [hf_prompt_logprobs(reference, p) for p in prompts]
    gaps = [g for _, top2, _ in greedy for g in top2_gaps(top2)]
    assert sum(g > 1e-3 for g in gaps) / len(gaps) > 0.9, "reference logits are not decisive enough"
    return folder, prompts, greedy, prompt_logprobs


def params(prompt_logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=prompt_logprobs
    )


def check(outputs, gemma3, label: str, with_prompt_logprobs: bool = True) -> None:
    _, prompts, greedy, prompt_logprobs = gemma3
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        ref_tokens, ref_top2, ref_chosen = greedy[i]
        completion = output.outputs[0]
        ours_top2 = [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]
        identical = assert_greedy_match(
            completion.token_ids, ref_tokens, ref_top2, ours_top2, f"{label}[{i}]"
        )
        agree = (
            NUM_TOKENS
            if identical
            else next(j for j, (a, b) in enumerate(zip(completion.token_ids, ref_tokens)) if a != b)
        )
        ours_chosen = [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)]
        assert ours_chosen[:agree] == pytest.approx(ref_chosen[:agree], abs=1e-3), f"{label}[{i}]"
        if with_prompt_logprobs:
            ours_prompt = [lp[t].logprob for t, lp in zip(prompt[1:], output.prompt_logprobs[1:])]
            assert ours_prompt == pytest.approx(prompt_logprobs[i], abs=1e-3), f"{label}[{i}] prompt"


@pytest.mark.parametrize("budget", [None, 16], ids=["one-batch", "chunked-16"])
def test_matches_transformers(gemma3, budget):
    folder, prompts, _, _ = gemma3
    llm = LLM(
        str(folder), dtype="float32", max_num_batched_tokens=budget, num_kv_blocks=128, block_size=BLOCK
    )
    assert [g.sliding_window for g in llm.engine.engine_core.kv_cache_groups] == [None, WINDOW]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params(prompt_logprobs=1))
    check(outputs, gemma3, f"gemma3 budget={budget}")


def test_prefix_cache_on_equals_off_and_transformers(gemma3):
    folder, prompts, _, _ = gemma3
    batch = [{"prompt_token_ids": p} for p in prompts]
    common = dict(dtype="float32", num_kv_blocks=128, block_size=BLOCK, max_num_batched_tokens=32)
    off = LLM(str(folder), enable_prefix_caching=False, **common).generate(batch, params(None))
    cached = LLM(str(folder), enable_prefix_caching=True, **common)
    first = cached.generate(batch, params(None))
    rerun = cached.generate(batch, params(None))
    for prompt, out in zip(prompts, rerun):
        # Every full block but the last prompt token's: the sliding layers' window blocks of
        # the first run are still cached, so the hit is as long as for full attention alone.
        assert out.num_cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
    assert sum(out.num_cached_tokens for out in rerun) >= 80
    for label, outputs in (("prefix-off", off), ("prefix-first", first), ("prefix-hit", rerun)):
        check(outputs, gemma3, label, with_prompt_logprobs=False)
        assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in off]


def test_sliding_layers_hold_at_most_their_window(gemma3):
    """Decoding 4x the window: every step, each request's sliding blocks stay within the bound."""
    folder, prompts, greedy, _ = gemma3
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=128, block_size=BLOCK, max_num_batched_tokens=16)
    engine = llm.engine
    core = engine.engine_core
    kv = core.scheduler.kv_cache_manager
    full, sliding = kv.groups
    assert (full.sliding_window, sliding.sliding_window) == (None, WINDOW)
    bound = -(-WINDOW // BLOCK) + 1
    for i in (1, 3):  # the 17- and 48-token prompts, 32 new tokens each (4x the window)
        engine.add_request(str(i), {"prompt_token_ids": prompts[i]}, params(None))
    finished, steps, most_held = {}, 0, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        steps += 1
        for request in core.scheduler.running:
            rid = request.request_id
            held = sliding.num_held_blocks(rid)
            assert held <= bound, f"step {steps}: request {rid} holds {held} sliding blocks (bound {bound})"
            num_blocks = -(-request.num_computed_tokens // BLOCK)
            assert full.num_held_blocks(rid) == num_blocks
            sliding_ids = kv.get_block_ids(request)[1]
            # Every dropped entry is the null block, and they all come before the window.
            assert len(sliding_ids) == num_blocks and sliding_ids[: num_blocks - held] == [0] * (
                num_blocks - held
            )
            most_held = max(most_held, held)
    assert most_held == bound and steps > NUM_TOKENS
    for i in (1, 3):
        ref_tokens, ref_top2, _ = greedy[i]
        assert_greedy_match(finished[str(i)].outputs[0].token_ids, ref_tokens, ref_top2, label=f"bound[{i}]")
    assert sliding.block_pool.num_free_blocks == sliding.block_pool.num_blocks

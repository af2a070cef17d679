"""Greedy tokens, sample logprobs and prompt logprobs equal `transformers` on tiny random models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_reference import hf_greedy, hf_prompt_logprobs, top2_gaps
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 32
PROMPT_LENS = [5, 17, 33, 48]


def prompts_for(vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_mistral_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("budget", [None, 16], ids=["one-batch", "chunked-16"])
def test_matches_transformers(fixture, budget, request):
    path = request.getfixturevalue(fixture)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = prompts_for(reference.config.vocab_size, seed=len(fixture))
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=budget, num_kv_blocks=64, block_size=8)
    params = SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)

    gaps = []
    for prompt, output in zip(prompts, outputs):
        ref_tokens, ref_top2, ref_chosen = hf_greedy(reference, prompt, NUM_TOKENS)
        gaps += top2_gaps(ref_top2)
        completion = output.outputs[0]
        ours_top2 = [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]
        identical = assert_greedy_match(completion.token_ids, ref_tokens, ref_top2, ours_top2, fixture)
        agree = (
            len(ref_tokens)
            if identical
            else next(i for i, (a, b) in enumerate(zip(completion.token_ids, ref_tokens)) if a != b)
        )
        ours_chosen = [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)]
        assert ours_chosen[:agree] == pytest.approx(ref_chosen[:agree], abs=1e-3)

        ref_prompt = hf_prompt_logprobs(reference, prompt)
        assert output.prompt_logprobs[0] is None
        ours_prompt = [lp[t].logprob for t, lp in zip(prompt[1:], output.prompt_logprobs[1:])]
        assert ours_prompt == pytest.approx(ref_prompt, abs=1e-3)
    decisive = sum(g > 1e-3 for g in gaps) / len(gaps)
    assert decisive > 0.9, f"reference logits are not decisive enough ({decisive:.0%} of gaps > 1e-3)"

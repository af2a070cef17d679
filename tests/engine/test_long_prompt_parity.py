"""Long prompts in many chunks equal `transformers` (float32, tiny random Mistral whose sliding
window is far shorter than the prompt), including a prefix hit in the middle of a long prompt."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from hf_reference import hf_greedy, hf_prompt_logprobs
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 8
WINDOW = 64
BLOCK = 16


@pytest.fixture(scope="module")
def long_mistral_dir(tmp_path_factory):
    config = tiny_models.mistral_config(max_position_embeddings=4096, sliding_window=WINDOW)
    return tiny_models.save_tiny(config, tmp_path_factory.mktemp("long-mistral"), seed=5)


def test_long_prompts_in_many_chunks_with_a_prefix_hit(long_mistral_dir):
    reference = AutoModelForCausalLM.from_pretrained(long_mistral_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(11)
    first = torch.randint(3, reference.config.vocab_size, (3000,), generator=gen).tolist()
    # Shares the first 1,600 tokens (100 blocks), then goes on differently.
    second = first[:1600] + torch.randint(3, reference.config.vocab_size, (900,), generator=gen).tolist()
    llm = LLM(
        str(long_mistral_dir),
        dtype="float32",
        max_num_batched_tokens=256,  # ~12 chunks for the first prompt
        block_size=BLOCK,
        num_kv_blocks=512,
        enable_prefix_caching=True,
    )
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2)
    for prompt, expect_hit in ((first, 0), (second, 1600)):
        output = llm.generate([{"prompt_token_ids": prompt}], params)[0]
        assert output.num_cached_tokens == expect_hit, "the second prompt must hit the first one's blocks"
        ref_tokens, ref_top2, _ = hf_greedy(reference, prompt, NUM_TOKENS)
        completion = output.outputs[0]
        ours_top2 = [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]
        assert_greedy_match(completion.token_ids, ref_tokens, ref_top2, ours_top2, f"{len(prompt)} tokens")
    # Every position of a prompt computed in 12 chunks (prompt logprobs bypass the prefix cache).
    with_prompt = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    output = llm.generate([{"prompt_token_ids": first}], with_prompt)[0]
    ours_prompt = [lp[t].logprob for t, lp in zip(first[1:], output.prompt_logprobs[1:])]
    assert ours_prompt == pytest.approx(hf_prompt_logprobs(reference, first), abs=1e-3)

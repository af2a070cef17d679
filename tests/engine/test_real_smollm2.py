"""The real SmolLM2-135M-Instruct GGUF, float32, against `transformers` loading the same file."""

from __future__ import annotations

import pytest
import torch

from hf_reference import hf_greedy, hf_prompt_logprobs
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.model.loader.resolve import resolve_model

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llm():
    return LLM(MODEL, dtype="float32", kv_cache_memory=0.25)


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    path = resolve_model(MODEL).path
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_chat_knows_the_capital_of_france(llm):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=32))[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason in ("stop", "length")


def test_greedy_and_prompt_logprobs_match_transformers(llm, reference):
    prompt = "The history of the printing press begins in"
    ids = llm.get_tokenizer()(prompt).input_ids
    out = llm.generate(
        [prompt],
        SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=2, prompt_logprobs=1),
    )[0]
    assert out.prompt_token_ids == ids
    ref_tokens, ref_top2, ref_chosen = hf_greedy(reference, ids, 32)
    completion = out.outputs[0]
    ours_top2 = [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]
    assert_greedy_match(completion.token_ids, ref_tokens, ref_top2, ours_top2, "smollm2")
    ref_prompt = hf_prompt_logprobs(reference, ids)
    ours_prompt = [lp[t].logprob for t, lp in zip(ids[1:], out.prompt_logprobs[1:])]
    assert ours_prompt == pytest.approx(ref_prompt, abs=1e-3)

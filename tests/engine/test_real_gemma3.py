"""The real Gemma 3 270M GGUF (Q4_K_M), float32, against `transformers` loading the same file.

The GGUF lacks the 5-local : 1-global layer pattern and the local rope base; both engines
derive them from Gemma 3's defaults. Prompts stay shorter than the 512-token window, so this
checks the weights, norms, rope bases and scaling; the window itself is tested on tiny models.
"""

from __future__ import annotations

import pytest
import torch

from hf_reference import hf_greedy, hf_prompt_logprobs
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.entrypoints.chat_utils import ChatTemplateError
from pagedllm.model.loader.resolve import resolve_model

MODEL = "gemma-3-270m"
PROMPT = "The capital of France is"
NUM_TOKENS = 32


@pytest.fixture(scope="module")
def llm():
    return LLM(MODEL, dtype="float32", kv_cache_memory=0.1, max_model_len=1024)


def test_greedy_tokens_and_prompt_logprobs_match_transformers(llm):
    from transformers import AutoModelForCausalLM

    ids = llm.get_tokenizer()(PROMPT).input_ids
    assert ids[0] == 2 and ids.count(2) == 1  # Gemma's tokenizer adds BOS itself, once
    params = SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    (output,) = llm.generate([PROMPT], params)
    assert output.prompt_token_ids == ids

    path = resolve_model(MODEL).path
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    ref_tokens, ref_top2, ref_chosen = hf_greedy(reference.eval(), ids, NUM_TOKENS)
    completion = output.outputs[0]
    ours_top2 = [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]
    assert assert_greedy_match(completion.token_ids, ref_tokens, ref_top2, ours_top2, "gemma-3-270m")
    ours_chosen = [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)]
    assert ours_chosen == pytest.approx(ref_chosen, abs=1e-3)
    ours_prompt = [lp[t].logprob for t, lp in zip(ids[1:], output.prompt_logprobs[1:])]
    assert ours_prompt == pytest.approx(hf_prompt_logprobs(reference, ids), abs=1e-3)
    assert completion.text.strip()


def test_kv_cache_groups_and_no_chat_template(llm):
    groups = llm.engine.engine_core.kv_cache_groups
    assert [g.sliding_window for g in groups] == [None, 512]
    # A small budget: the sliding pool is not capped by its windows, so both get equal blocks.
    assert groups[1].num_blocks == groups[0].num_blocks == llm.engine.num_kv_blocks
    with pytest.raises(ChatTemplateError, match="no chat template"):
        llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=4))

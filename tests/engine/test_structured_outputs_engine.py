"""Constrained decoding in the engine (default model, float32): 32 concurrent requests mixing
JSON-schema, regex, choice and plain ones, with preemption forced by a small KV pool. Every
constrained output validates; every plain greedy output equals the same request alone."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 16},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999},
        "tags": {"type": "array", "items": {"enum": ["big", "old", "new"]}, "maxItems": 2},
    },
    "required": ["city", "population", "tags"],
}
REGEX = r"[0-9]{3}-[0-9]{4}"
CHOICES = ["Paris", "Rome", "Madrid"]
TOPICS = ["France", "Italy", "Spain", "Japan", "Peru", "Kenya", "Norway", "Chile"]


@pytest.fixture(scope="module")
def llm():
    # 40 blocks of 16 tokens for 32 requests of ~60-90 tokens each: preemption is certain.
    return LLM(MODEL, dtype="float32", num_kv_blocks=40, block_size=16, max_num_seqs=32)


def _prompt(llm, i: int) -> dict:
    question = f"Tell me about a city in {TOPICS[i % len(TOPICS)]} (request {i})."
    return {"prompt_token_ids": llm.apply_chat_template([{"role": "user", "content": question}])}


def _case(i: int) -> SamplingParams:
    kind = i % 4
    temperature = 1.0 if i % 8 >= 4 else 0.0
    if kind == 0:
        constraint = StructuredOutputsParams(json=SCHEMA)
    elif kind == 1:
        constraint = StructuredOutputsParams(regex=REGEX)
    elif kind == 2:
        constraint = StructuredOutputsParams(choice=CHOICES)
    else:  # plain greedy, with logprobs for the near-tie rule
        return SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    return SamplingParams(temperature=temperature, seed=i, max_tokens=60, structured_outputs=constraint)


def _top2(completion):
    return [
        sorted(((t, lp.logprob) for t, lp in pos.items() if lp.rank in (1, 2)), key=lambda x: -x[1])
        for pos in completion.logprobs
    ]


def test_mixed_batch_under_preemption(llm):
    prompts = [_prompt(llm, i) for i in range(32)]
    params = [_case(i) for i in range(32)]
    before = llm.engine.engine_core.scheduler.num_preemptions
    outputs = llm.generate(prompts, params)
    assert llm.engine.engine_core.scheduler.num_preemptions > before, "the small pool was meant to preempt"
    for i, out in enumerate(outputs):
        completion = out.outputs[0]
        kind = i % 4
        if kind == 3:
            alone = llm.generate([prompts[i]], params[i])[0].outputs[0]
            assert_greedy_match(
                completion.token_ids,
                alone.token_ids,
                _top2(alone),
                [[t for t, _ in p] for p in _top2(completion)],
                f"plain[{i}]",
            )
            continue
        assert completion.finish_reason == "stop", (i, completion.finish_reason, completion.text)
        if kind == 0:
            jsonschema.validate(json.loads(completion.text), SCHEMA)
        elif kind == 1:
            assert re.fullmatch(REGEX, completion.text), completion.text
        else:
            assert completion.text in CHOICES


def test_n_samples_each_follow_the_grammar(llm):
    params = SamplingParams(
        n=3, temperature=1.0, seed=5, max_tokens=60, structured_outputs=StructuredOutputsParams(json=SCHEMA)
    )
    out = llm.generate([_prompt(llm, 1)], params)[0]
    assert len(out.outputs) == 3
    for completion in out.outputs:
        assert completion.finish_reason == "stop"
        jsonschema.validate(json.loads(completion.text), SCHEMA)


def test_offline_errors_are_clear(llm):
    with pytest.raises(StructuredOutputsError, match="invalid regex"):
        llm.generate([_prompt(llm, 0)], SamplingParams(structured_outputs=StructuredOutputsParams(regex="(")))
    with pytest.raises(StructuredOutputsError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["b"])
    # The engine is still usable afterwards.
    ok = llm.generate([_prompt(llm, 0)], SamplingParams(max_tokens=3, structured_outputs={"choice": ["yes"]}))
    assert ok[0].outputs[0].text == "yes"


def test_a_grammar_left_without_allowed_tokens_ends_its_request_not_the_engine(llm):
    """allowed_token_ids that exclude every token the grammar allows leave nothing to sample:
    that request ends (found by the API fuzzer, which used to kill the engine core with it);
    the requests beside it in the batch, and later ones, are served."""
    tokenizer = llm.get_tokenizer()
    outside = tokenizer(" zebra", add_special_tokens=False).input_ids[:1]  # no choice starts so
    starved = SamplingParams(max_tokens=5, allowed_token_ids=outside, structured_outputs={"choice": ["yes"]})
    plain = SamplingParams(max_tokens=3, structured_outputs={"choice": ["yes"]})
    out = llm.generate([_prompt(llm, 0), _prompt(llm, 1)], [starved, plain])
    assert out[0].outputs[0].finish_reason == "stop" and len(out[0].outputs[0].token_ids) == 1
    assert out[1].outputs[0].text == "yes"
    assert llm.generate([_prompt(llm, 2)], plain)[0].outputs[0].text == "yes"

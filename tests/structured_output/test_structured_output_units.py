"""Grammar compilation, schema support, the bitmask and the matchers, on the tiny tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

import tiny_models
from pagedllm.structured_output.bitmask import (
    apply_grammar_bitmask,
    apply_grammar_bitmask_reference,
    unpack_bitmask,
)
from pagedllm.structured_output.grammar_compiler import GrammarCompiler
from pagedllm.structured_output.matcher import GrammarMatchers
from pagedllm.structured_output.schema_support import check_schema
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

VOCAB = tiny_models.VOCAB


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.build_tokenizer()


@pytest.fixture
def compiler(tokenizer):
    eos = tokenizer.convert_tokens_to_ids("</s>")
    return GrammarCompiler(lambda: tokenizer, VOCAB, [eos])


def test_unpack_and_apply_match_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    vocab = 77  # not a multiple of 32: the last word is partial
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 3), generator=gen, dtype=torch.int64).to(torch.int32)
    allowed = unpack_bitmask(bitmask, vocab)
    for r in range(3):
        for t in range(vocab):
            assert bool(allowed[r, t]) == bool((int(bitmask[r, t // 32]) >> (t % 32)) & 1)
    rows = torch.tensor([0, 2, 4])
    bitmask = torch.cat([bitmask[:1], bitmask[:1], bitmask[1:2], bitmask[:1], bitmask[2:3]])  # [5, W]
    allowed = unpack_bitmask(bitmask, vocab)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = torch.randn(5, vocab, generator=gen).to(dtype)
        masked = apply_grammar_bitmask_reference(logits, rows, bitmask)
        assert masked.dtype == dtype and torch.equal(masked[[1, 3]], logits[[1, 3]])
        for r in rows.tolist():
            expected = logits[r].masked_fill(~allowed[r], float("-inf"))
            assert torch.equal(masked[r], expected)
        # xgrammar's kernel (what the sampler runs) gives the reference's bits.
        assert torch.equal(apply_grammar_bitmask(logits, rows, bitmask), masked)
        assert not torch.isinf(logits).any()  # the caller's tensor is untouched


def test_schema_keywords_that_cannot_be_enforced_are_named():
    check_schema({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3, "title": "A"}}})
    with pytest.raises(StructuredOutputsError, match="'uniqueItems' \\(at #/properties/a\\)"):
        check_schema({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}})
    with pytest.raises(StructuredOutputsError, match="format 'color'"):
        check_schema({"type": "string", "format": "color"})
    with pytest.raises(StructuredOutputsError, match="'if'"):
        check_schema({"anyOf": [{"type": "string"}, {"if": {"type": "string"}}]})


def test_params_need_exactly_one_constraint():
    assert StructuredOutputsParams(json={"type": "object"}).json == json.dumps({"type": "object"})
    assert StructuredOutputsParams(choice=["a", "b"]).key == ("choice", ("a", "b"), False)
    for bad in ({}, {"regex": "a", "grammar": 'root ::= "a"'}, {"choice": []}, {"json": "{not json"}):
        with pytest.raises(StructuredOutputsError):
            StructuredOutputsParams(**bad)


def test_compiles_once_per_distinct_constraint(compiler):
    regex = StructuredOutputsParams(regex="[ab]{2}")
    first = compiler.submit(regex)
    assert compiler.submit(StructuredOutputsParams(regex="[ab]{2}")) is first
    assert compiler.submit(StructuredOutputsParams(regex="[ab]{2}", any_whitespace=True)) is not first
    assert (compiler.queries, compiler.hits) == (3, 1)
    compiler.compile(regex)
    with pytest.raises(StructuredOutputsError, match="invalid regex"):
        compiler.compile(StructuredOutputsParams(regex="(unclosed"))
    with pytest.raises(StructuredOutputsError, match="invalid grammar"):
        compiler.compile(StructuredOutputsParams(grammar="root ::= undefined_rule"))


def test_a_compile_over_its_time_bound_is_an_error(compiler):
    with pytest.raises(StructuredOutputsError, match="took longer than 0 s"):
        compiler.compile(StructuredOutputsParams(regex="[a-z]{1,40}@[a-z]{1,40}"), timeout=0.0)


def test_matchers_follow_a_choice_to_its_stop_token(compiler, tokenizer):
    eos = tokenizer.convert_tokens_to_ids("</s>")
    grammar = compiler.compile(StructuredOutputsParams(choice=["fox", "dog"]))
    matchers = GrammarMatchers(VOCAB)
    matchers.add("r", grammar)
    rows, bitmask = matchers.bitmask(["plain", "r"])
    assert rows.tolist() == [1] and bool((bitmask[0] == -1).all())  # the plain row allows all
    allowed = unpack_bitmask(bitmask, VOCAB)[1]
    texts = {tokenizer.decode([t]) for t in allowed.nonzero().flatten().tolist()}
    assert texts and all("fox".startswith(t) or "dog".startswith(t) for t in texts)
    for token in tokenizer("dog", add_special_tokens=False).input_ids:
        assert matchers.accept("r", token) is False
    assert matchers.accept("r", eos) is True  # terminated: nothing may follow
    with pytest.raises(RuntimeError, match="breaks its grammar"):
        matchers.add("s", grammar)
        matchers.accept("s", eos)


def test_structural_tag_constrains_only_inside_its_tags(compiler, tokenizer):
    tag = {
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": ["<f>"],
            "tags": [
                {
                    "begin": "<f>",
                    "content": {
                        "type": "json_schema",
                        "json_schema": {
                            "type": "object",
                            "properties": {"a": {"type": "integer"}},
                            "required": ["a"],
                        },
                    },
                    "end": "</f>",
                }
            ],
        },
    }
    grammar = compiler.compile(StructuredOutputsParams(structural_tag=tag))

    def accepts(text: str) -> bool:
        matchers = GrammarMatchers(VOCAB)
        matchers.add("r", grammar)
        try:
            for token in tokenizer(text, add_special_tokens=False).input_ids:
                matchers.accept("r", token)
        except RuntimeError:
            return False
        return True

    assert accepts('free text <f>{"a": 1}</f> more')
    assert not accepts('free text <f>{"b": 1}')
    with pytest.raises(StructuredOutputsError, match="invalid structural_tag"):
        compiler.compile(
            StructuredOutputsParams(structural_tag={"type": "structural_tag", "format": {"type": "nope"}})
        )


def test_a_grammar_starts_only_after_the_reasoning_ends(compiler, tokenizer):
    grammar = compiler.compile(StructuredOutputsParams(choice=["fox"]))
    end = tokenizer("</think>", add_special_tokens=False).input_ids
    assert len(end) > 1  # several tokens here: the whole sequence must appear
    matchers = GrammarMatchers(VOCAB)
    matchers.add("r", grammar, starts_after=end)
    # A partial end tag mid-thought, then the end tag's tokens but its last.
    thinking = tokenizer("I think </ not yet ", add_special_tokens=False).input_ids + end[:-1]
    for token in thinking:
        assert matchers.bitmask(["r"]) is None  # unconstrained while thinking
        assert matchers.accept("r", token) is False  # any token is fine: no grammar yet
    for token in end[len(end) - 1 :]:
        matchers.accept("r", token)
    rows, bitmask = matchers.bitmask(["r"])  # the end tag is complete: constrained now
    allowed = {tokenizer.decode([t]) for t in unpack_bitmask(bitmask, VOCAB)[0].nonzero().flatten().tolist()}
    assert allowed and all("fox".startswith(t) for t in allowed)

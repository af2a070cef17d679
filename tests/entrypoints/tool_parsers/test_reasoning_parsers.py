"""Reasoning parsers: whole outputs, and streams cut anywhere giving exactly the same split."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pagedllm.entrypoints.openai.reasoning import REASONING_PARSERS, get_reasoning_parser
from pagedllm.entrypoints.openai.reasoning.base import ReasoningSplit, StreamingReasoningParser


@dataclass
class Case:
    id: str
    text: str
    reasoning: str | None
    content: str | None
    tags_are_markup: bool = True  # the text's tag characters are all real tags (none may leak)


DEEPSEEK_R1 = [
    Case(
        "think",
        "<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4.",
        "Let me add 2 and 2.",
        "The answer is 4.",
    ),
    Case("no-start-tag", "First, 2 + 2 = 4.\n</think>\n\nIt is 4.", "First, 2 + 2 = 4.", "It is 4."),
    Case("no-end-tag", "<think>\nStill working on it", "Still working on it", None),
    Case("no-tags-at-all", "Just musing aloud, no tags", "Just musing aloud, no tags", None),
    Case("empty-thought", "<think></think>Answer.", None, "Answer."),
    Case("nothing-after", "<think>Only a thought.</think>\n", "Only a thought.", None),
    Case(
        "inner-whitespace-kept",
        "  <think>  one \n\n two  </think> \n three  four ",
        "one \n\n two",
        "three  four ",
    ),
    Case(
        "unicode",
        "<think>Ünïcödé 日本語 🎉 thoughts</think>Answer: ✓ 完了",
        "Ünïcödé 日本語 🎉 thoughts",
        "Answer: ✓ 完了",
    ),
    Case(
        "tag-lookalikes",
        "a < b, </thin and <think> again</think>ok </think> stays",
        "a < b, </thin and <think> again",
        "ok </think> stays",
        tags_are_markup=False,
    ),
    Case("cut-inside-end-tag", "<think>almost done</thi", "almost done</thi", None, tags_are_markup=False),
    Case("empty", "", None, None),
]

QWEN3 = [
    Case(
        "think",
        "<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is 4.",
        "Let me add 2 and 2.",
        "The answer is 4.",
    ),
    Case("leading-whitespace", "\n\n<think>r e</think>  a b", "r e", "a b"),
    Case("thinking-off", "<think>\n\n</think>\n\nThe answer is 4.", None, "The answer is 4."),
    Case("no-think", "The answer is 4.\n", None, "The answer is 4.\n"),
    Case(
        "no-end-tag",
        "<think>\nStill working on it",
        None,
        "<think>\nStill working on it",
        tags_are_markup=False,
    ),
    Case("no-start-tag", "reasoning</think>answer", None, "reasoning</think>answer", tags_are_markup=False),
    Case(
        "unicode",
        "<think>Ünïcödé 日本語 🎉 thoughts</think>Answer: ✓ 完了",
        "Ünïcödé 日本語 🎉 thoughts",
        "Answer: ✓ 完了",
    ),
    Case(
        "tag-lookalikes",
        "<think>a < b, </thin and more</think>ok </think> stays",
        "a < b, </thin and more",
        "ok </think> stays",
        tags_are_markup=False,
    ),
    Case("partial-start-only", "  <thi", None, "  <thi", tags_are_markup=False),
    Case("empty", "", None, None),
]

PARSERS = {"deepseek_r1": DEEPSEEK_R1, "qwen3": QWEN3}
ALL_CASES = [
    pytest.param(name, case, id=f"{name}-{case.id}") for name, cases in PARSERS.items() for case in cases
]
TAG_FRAGMENTS = ["<", ">", "think"]


def run_stream(stream: StreamingReasoningParser, pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    deltas = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    return "".join(r for r, _ in deltas), "".join(c for _, c in deltas), deltas


def check_stream(name: str, case: Case, pieces: list[str]) -> None:
    reasoning, content, deltas = run_stream(get_reasoning_parser(name).streaming(), pieces)
    assert (reasoning, content) == (case.reasoning or "", case.content or ""), pieces
    if case.tags_are_markup:
        for delta in (part for pair in deltas for part in pair):
            assert not any(fragment in delta for fragment in TAG_FRAGMENTS), (delta, pieces)


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_extract(name: str, case: Case) -> None:
    assert get_reasoning_parser(name).extract(case.text) == ReasoningSplit(case.reasoning, case.content)


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_stream_any_split(name: str, case: Case) -> None:
    text = case.text
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            check_stream(name, case, [text[:first], text[first:second], text[second:]])
    check_stream(name, case, list(text))


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_stream_tokens(name: str, case: Case, token_pieces) -> None:
    check_stream(name, case, token_pieces(case.text))


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_reasoning_ended_exactly_when_end_tag_completes(name: str, case: Case) -> None:
    parser = get_reasoning_parser(name)
    split = parser.extract(case.text)
    # The end tag counts only where it closes a thought: it is in the text and not inside the content.
    closes = (split.reasoning_content is not None or split.content != case.text) and "</think>" in case.text
    done_at = case.text.index("</think>") + len("</think>") if closes else None
    stream = parser.streaming()
    assert not stream.reasoning_ended
    for position, ch in enumerate(case.text, start=1):
        stream.feed(ch)
        assert stream.reasoning_ended == (done_at is not None and position >= done_at), position
    stream.finish()
    assert stream.reasoning_ended == (done_at is not None)


def test_end_tag_split_across_pieces_never_leaks() -> None:
    for name in PARSERS:
        stream = get_reasoning_parser(name).streaming()
        assert stream.feed("<think>") == ("", "")
        first = stream.feed("I reason.</thi")
        assert not stream.reasoning_ended
        second = stream.feed("nk>Done.")
        assert stream.reasoning_ended
        assert stream.finish() == ("", "")
        assert first[1] == "" and "<" not in first[0] + second[0] + second[1]
        assert (first[0] + second[0], second[1]) == ("I reason.", "Done.")


def test_deepseek_streams_reasoning_as_it_comes() -> None:
    stream = get_reasoning_parser("deepseek_r1").streaming()
    assert stream.feed("Thinking") == ("Thinking", "")
    assert stream.feed(" more \n") == (" more", "")  # trailing whitespace waits for what follows
    assert stream.feed("still") == (" \nstill", "")
    assert stream.feed("\n</think>\n\nAn") == ("", "An")
    assert stream.feed("swer.") == ("", "swer.")


def test_qwen3_holds_the_thought_until_it_closes() -> None:
    stream = get_reasoning_parser("qwen3").streaming()
    assert stream.feed("<think>\nThinking") == ("", "")
    assert stream.feed(" more</think>\n\nAn") == ("Thinking more", "An")
    plain = get_reasoning_parser("qwen3").streaming()
    assert plain.feed("Straight") == ("", "Straight")  # ruled out at once: streams as content


def test_registry() -> None:
    assert sorted(REASONING_PARSERS) == ["deepseek_r1", "qwen3"]
    for name, parser_cls in REASONING_PARSERS.items():
        parser = get_reasoning_parser(name)
        assert type(parser) is parser_cls and parser.name == name
        assert (parser.start_tag, parser.end_tag) == ("<think>", "</think>")
    with pytest.raises(ValueError, match="deepseek_r1, qwen3"):
        get_reasoning_parser("nope")

"""Tool-call parsers: whole outputs, and streams cut anywhere giving exactly the same result."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS, get_tool_parser
from pagedllm.entrypoints.openai.tool_parsers.base import (
    DeltaMessage,
    ExtractedToolCalls,
    StreamingToolParser,
    ToolCall,
)
from pagedllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedllm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedllm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser


def call(name: str, **arguments) -> ToolCall:
    return ToolCall(name, json.dumps(arguments, ensure_ascii=False))


def calls(*items: ToolCall, content: str | None = None) -> ExtractedToolCalls:
    return ExtractedToolCalls(content=content, tool_calls=list(items))


def plain(text: str) -> ExtractedToolCalls:
    """What a malformed or call-free output extracts to: the original text, untouched."""
    return ExtractedToolCalls(content=text, tool_calls=[])


NESTED = {
    "query": {"terms": ["smørbrød", "日本語", "naïve"], "limit": 3, "exact": True, "near": None},
    "emoji": "🎉👍🏽",
    "note": 'a "quoted" <b>tag</b> [ARGS] {brace} ; done',
    "matrix": [[1, 2.5], [], [{"deep": {"er": [-1]}}]],
}
NESTED_JSON = json.dumps(NESTED, ensure_ascii=False)


@dataclass
class Case:
    id: str
    text: str
    expected: ExtractedToolCalls


def _hermes_block(name: str, arguments: dict, key: str = "arguments") -> str:
    return f"<tool_call>\n{json.dumps({'name': name, key: arguments}, ensure_ascii=False)}\n</tool_call>"


HERMES = [
    Case("single", _hermes_block("get_weather", {"city": "Oslo"}), calls(call("get_weather", city="Oslo"))),
    Case(
        "text-before",
        "Let me check the weather for you.\n" + _hermes_block("get_weather", {"city": "Oslo"}),
        calls(call("get_weather", city="Oslo"), content="Let me check the weather for you."),
    ),
    Case(
        "several",
        _hermes_block("get_weather", {"city": "Oslo"})
        + "\n"
        + _hermes_block("get_time", {"zone": "Europe/Oslo"})
        + "\nBoth requested.",
        calls(
            call("get_weather", city="Oslo"), call("get_time", zone="Europe/Oslo"), content="Both requested."
        ),
    ),
    Case(
        "compact-and-empty-arguments",
        '<tool_call>{"name":"now","arguments":{}}</tool_call>',
        calls(ToolCall("now", "{}")),
    ),
    Case("nested-unicode", _hermes_block("search", NESTED), calls(ToolCall("search", NESTED_JSON))),
    Case(
        "arguments-as-json-string",
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>',
        calls(call("add", a=1, b=2)),
    ),
    Case(
        "broken-json",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}\n</tool_call>',
        None,
    ),
    Case("unclosed", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}', None),
    Case("no-name", '<tool_call>{"arguments": {"city": "Oslo"}}</tool_call>', None),
    Case("non-object-arguments", '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>', None),
    Case("no-arguments", '<tool_call>{"name": "f"}</tool_call>', None),
    Case("partial-tag-in-text", "Use a <tool_c tag? No: x < y and <b>bold</b>.", None),
    Case("plain", "The weather in Oslo is mild today.", None),
    Case(
        "good-then-broken",
        _hermes_block("a", {"x": 1}) + "\n<tool_call>{oops}</tool_call>",
        calls(call("a", x=1), content="<tool_call>{oops}</tool_call>"),
    ),
]

LLAMA3 = [
    Case(
        "single",
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        calls(call("get_weather", city="Oslo")),
    ),
    Case(
        "python-tag",
        '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Oslo"}}',
        calls(call("get_weather", city="Oslo")),
    ),
    Case(
        "text-before",
        'Let me look that up.\n\n{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        calls(call("get_weather", city="Oslo"), content="Let me look that up."),
    ),
    Case(
        "several",
        '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": [1, 2]}};\n',
        calls(call("a", x=1), call("b", y=[1, 2])),
    ),
    Case(
        "nested-unicode",
        json.dumps({"name": "search", "parameters": NESTED}, ensure_ascii=False),
        calls(ToolCall("search", NESTED_JSON)),
    ),
    Case("unclosed", '{"name": "get_weather", "parameters": {"city": "Oslo"}', None),
    Case("no-name", '{"parameters": {"city": "Oslo"}}', None),
    Case("non-object-arguments", '{"name": "f", "parameters": "not json"}', None),
    Case("text-after", '{"name": "f", "parameters": {}} That is the call.', None),
    Case("bad-second-call", '{"name": "f", "parameters": {}}; {"name": 3, "parameters": {}}', None),
    Case("brace-in-prose", "The set {1, 2} has two elements, {x} none.", None),
    Case("json-answer", 'Here: {"answer": 42}', None),
    Case("python-tag-code", '<|python_tag|>print("hello")', None),
    Case("partial-tag-in-text", "Compare a <|python and b.", None),
    Case("plain", "The weather in Oslo is mild today.", None),
]

MISTRAL = [
    Case(
        "single",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
        calls(call("get_weather", city="Oslo")),
    ),
    Case(
        "text-before",
        'Sure, checking.\n[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
        calls(call("get_weather", city="Oslo"), content="Sure, checking."),
    ),
    Case(
        "several",
        '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": "z"}}]',
        calls(call("a", x=1), call("b", y="z")),
    ),
    Case(
        "arguments-as-json-string",
        '[TOOL_CALLS][{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}]',
        calls(call("add", a=1, b=2)),
    ),
    Case(
        "nested-unicode",
        "[TOOL_CALLS]" + json.dumps([{"name": "search", "arguments": NESTED}], ensure_ascii=False),
        calls(ToolCall("search", NESTED_JSON)),
    ),
    Case(
        "args-form",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}',
        calls(call("get_weather", city="Oslo")),
    ),
    Case(
        "args-form-repeated",
        'Two calls.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]search[ARGS]' + NESTED_JSON,
        calls(call("get_weather", city="Oslo"), ToolCall("search", NESTED_JSON), content="Two calls."),
    ),
    Case("unclosed", '[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}', None),
    Case("no-name", '[TOOL_CALLS][{"arguments": {"x": 1}}]', None),
    Case("non-object-arguments", '[TOOL_CALLS][{"name": "a", "arguments": 5}]', None),
    Case("empty-array", "[TOOL_CALLS][]", None),
    Case("args-form-broken-json", '[TOOL_CALLS]a[ARGS]{"x": }', None),
    Case("args-form-array", "[TOOL_CALLS]a[ARGS][1, 2]", None),
    Case("args-form-bad-name", "[TOOL_CALLS]get weather[ARGS]{}", None),
    Case("args-form-unfinished", '[TOOL_CALLS]get_weather[ARGS]{"city": "Os', None),
    Case("brackets-in-text", "See [1] and [TOOL] and [TOOL_CALL]s.", None),
    Case("plain", "The weather in Oslo is mild today.", None),
    Case(
        "good-then-broken",
        '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]oops',
        calls(call("a", x=1), content="[TOOL_CALLS]b[ARGS]oops"),
    ),
]

PYTHONIC = [
    Case("single", '[get_weather(city="Oslo")]', calls(call("get_weather", city="Oslo"))),
    Case(
        "several",
        "[get_weather(city='Oslo', unit=\"celsius\"), add(a=1, b=2.5), now()]",
        calls(call("get_weather", city="Oslo", unit="celsius"), call("add", a=1, b=2.5), call("now")),
    ),
    Case(
        "nested-unicode",
        "[search(query={'terms': ['smørbrød', '日本語', 'naïve'], 'limit': 3, 'exact': True, 'near': None},"
        " emoji='🎉👍🏽', note='a \"quoted\" <b>tag</b> [ARGS] {brace} ; done',"
        " matrix=[(1, 2.5), [], [{'deep': {'er': [-1]}}]])]",
        calls(ToolCall("search", NESTED_JSON)),
    ),
    Case(
        "wrapped-and-dotted",
        '\n<|python_start|>[tools.get_weather(city="Oslo")]<|python_end|>\n',
        calls(call("tools.get_weather", city="Oslo")),
    ),
    Case("surrounding-whitespace", " \n[f(x=1)] \n", calls(call("f", x=1))),
    Case("text-before", 'Let me check. [get_weather(city="Oslo")]', None),
    Case("unclosed", '[get_weather(city="Oslo")', None),
    Case("positional", '[get_weather("Oslo")]', None),
    Case("not-a-literal", "[get_weather(city=os.environ['HOME'])]", None),
    Case("set-value", "[f(x={1, 2})]", None),
    Case("double-star", "[f(**kwargs)]", None),
    Case("not-calls", "[1, 2, 3]", None),
    Case("empty-list", "[]", None),
    Case("text-after", '[get_weather(city="Oslo")] is what I would call.', None),
    Case("bracketed-prose", "[Note] brackets [like(this)] are fine.", None),
    Case("plain", "The weather in Oslo is mild today.", None),
]

PARSERS = {
    "hermes": (HermesToolParser, HERMES, ["<tool_call>", "</tool_call>"]),
    "llama3_json": (Llama3JsonToolParser, LLAMA3, ["<|python_tag|>"]),
    "mistral": (MistralToolParser, MISTRAL, ["[TOOL_CALLS]", "[ARGS]"]),
    "pythonic": (PythonicToolParser, PYTHONIC, ["<|python_start|>", "<|python_end|>"]),
}

ALL_CASES = [
    pytest.param(name, case, id=f"{name}-{case.id}")
    for name, (_, cases, _) in PARSERS.items()
    for case in cases
]
CALL_CASES = [p for p in ALL_CASES if p.values[1].expected is not None]


def expected_of(case: Case) -> ExtractedToolCalls:
    return case.expected if case.expected is not None else plain(case.text)


def normalised(result: ExtractedToolCalls) -> tuple[str, list[ToolCall]]:
    return (result.content or "").strip(), result.tool_calls


def run_stream(
    stream: StreamingToolParser, pieces: list[str]
) -> tuple[ExtractedToolCalls, list[DeltaMessage]]:
    """Feed the pieces, then finish; assemble the deltas as a client would."""
    messages = [stream.feed(piece) for piece in pieces] + [stream.finish()]
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in (d for m in messages for d in m.tool_calls):
        if delta.index in names:
            assert delta.name is None, "only a call's first delta carries its name"
        else:
            assert delta.index == len(names), "calls are numbered 0, 1, ... as they appear"
            assert delta.name is not None, "a call's first delta carries its name"
            names[delta.index] = delta.name
        arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    content = "".join(m.content for m in messages)
    assembled = [ToolCall(names[i], arguments[i]) for i in sorted(names)]
    return ExtractedToolCalls(content=content, tool_calls=assembled), messages


def check_stream(name: str, case: Case, pieces: list[str]) -> None:
    parser_cls, _, markup = PARSERS[name]
    assembled, messages = run_stream(parser_cls().streaming(), pieces)
    assert normalised(assembled) == normalised(expected_of(case)), pieces
    clean = case.expected is not None and not any(tag[:2] in (case.expected.content or "") for tag in markup)
    if clean:  # well-formed calls and no markup in the content: none may leak into it
        for message in messages:
            for tag in markup:
                assert tag[:2] not in message.content, (tag, message.content, pieces)


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_extract(name: str, case: Case) -> None:
    result = get_tool_parser(name).extract(case.text)
    assert result == expected_of(case)
    for tool_call in result.tool_calls:  # what a client will json.loads
        assert isinstance(json.loads(tool_call.arguments), dict)


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_stream_two_pieces_and_chars(name: str, case: Case) -> None:
    text = case.text
    for cut in range(len(text) + 1):
        check_stream(name, case, [text[:cut], text[cut:]])
    check_stream(name, case, list(text))
    check_stream(name, case, [text])


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_stream_tokens(name: str, case: Case, token_pieces) -> None:
    check_stream(name, case, token_pieces(case.text))


@pytest.mark.parametrize(("name", "case"), CALL_CASES)
def test_stream_three_pieces(name: str, case: Case) -> None:
    """Every pair of cuts (a call's markup and JSON cut in two places at once)."""
    text = case.text[:80]  # the full square of cuts is large; the markup is near the start
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1, 3):
            check_stream(name, case, [text[:first], text[first:second], text[second:]] + [case.text[80:]])


def test_content_streams_at_once_and_possible_markup_is_held() -> None:
    hermes = HermesToolParser().streaming()
    assert hermes.feed("Hello there.") == DeltaMessage(content="Hello there.")
    assert hermes.feed(" Checking <tool_c") == DeltaMessage(content=" Checking ")
    assert hermes.feed("all>") == DeltaMessage()
    assert hermes.feed('{"name": "f", "arguments": {"a": 1}}') == DeltaMessage()
    done = hermes.feed("</tool_call> ok")
    assert done.content == " ok"
    assert [(d.index, d.name, d.arguments) for d in done.tool_calls] == [(0, "f", ""), (0, None, '{"a": 1}')]
    assert hermes.finish() == DeltaMessage()

    mistral = MistralToolParser().streaming()
    assert mistral.feed("Sure [TOOL_").content == "Sure "
    assert mistral.feed("CALLS]f[AR").content == ""
    done = mistral.feed('GS]{"a": 1}[TOOL_CALLS]')
    assert [(d.name, d.arguments) for d in done.tool_calls] == [("f", ""), (None, '{"a": 1}')]
    assert mistral.finish() == DeltaMessage(content="[TOOL_CALLS]")

    llama = Llama3JsonToolParser().streaming()
    assert llama.feed("Plain words ").content == "Plain words "
    assert llama.feed('{"name": "f", "parameters": {}}') == DeltaMessage()
    final = llama.finish()
    assert final.content == "" and [d.name for d in final.tool_calls] == ["f", None]
    prose = Llama3JsonToolParser().streaming()
    assert prose.feed("<|python_tag|>").content == ""
    assert prose.feed(" print(1)").content == "<|python_tag|> print(1)"  # released once ruled out

    pythonic = PythonicToolParser().streaming()
    assert pythonic.feed("  [get_weather(").content == ""
    assert pythonic.feed('city="Oslo")]').content == ""
    final = pythonic.finish()
    assert [(d.name, d.arguments) for d in final.tool_calls] == [
        ("get_weather", ""),
        (None, '{"city": "Oslo"}'),
    ]
    words = PythonicToolParser().streaming()
    assert words.feed(" Hello").content == " Hello"


def test_registry() -> None:
    assert sorted(TOOL_PARSERS) == ["hermes", "llama3_json", "mistral", "pythonic"]
    for name, parser_cls in TOOL_PARSERS.items():
        parser = get_tool_parser(name)
        assert type(parser) is parser_cls and parser.name == name
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral, pythonic"):
        get_tool_parser("nope")

"""Tool-call responses built from generated text: whole and streamed, for each tool choice."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pagedllm.entrypoints.openai.tool_calling import ToolCallStream, finish_message, parse_tool_request

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "echo",
            "parameters": {"type": "object", "properties": {"s": {"type": "string"}}},
        },
    },
]


def _request(tool_choice, parallel=None, auto=True):
    req = SimpleNamespace(tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=parallel, functions=None)
    return parse_tool_request(req, auto, "hermes" if auto else None)


def _assemble(stream: ToolCallStream, pieces: list[str], finish_reason: str):
    deltas = [stream.feed(p) for p in pieces]
    held, reason = stream.finish(finish_reason)
    content, calls = "", {}
    for delta in deltas + held:
        content += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            entry = calls.setdefault(
                call["index"], {"id": call.get("id"), "name": call["function"].get("name"), "arguments": ""}
            )
            entry["arguments"] += call["function"].get("arguments", "")
    return content, [calls[i] for i in sorted(calls)], reason


def test_named_choice_streams_arguments_as_they_come():
    request = _request({"type": "function", "function": {"name": "add"}})
    text = '{"a": 12}'
    whole = finish_message(request, text, "stop")
    assert whole.content is None and whole.finish_reason == "stop"
    assert whole.tool_calls[0]["function"] == {"name": "add", "arguments": '{"a": 12}'}
    content, calls, reason = _assemble(ToolCallStream(request), ['{"a', '": 1', "2}"], "stop")
    assert content == "" and reason == "stop"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("add", {"a": 12})]
    assert finish_message(request, '{"a": 1', "length").tool_calls == []  # truncated: no call


def test_required_choice_parses_the_array_once_complete():
    request = _request("required")
    text = '[{"name": "add", "parameters": {"a": 1}}, {"name": "echo", "parameters": {"s": "x"}}]'
    whole = finish_message(request, text, "stop")
    assert whole.finish_reason == "tool_calls" and len({c["id"] for c in whole.tool_calls}) == 2
    content, calls, reason = _assemble(ToolCallStream(request), [text[:10], text[10:]], "stop")
    assert reason == "tool_calls" and content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("add", {"a": 1}),
        ("echo", {"s": "x"}),
    ]
    assert request.constraint().json  # forced by a grammar
    assert json.loads(_request("required", parallel=False).constraint().json)["maxItems"] == 1


def test_auto_choice_parses_free_output_and_holds_back_markup():
    request = _request("auto")
    text = 'Let me check.\n<tool_call>\n{"name": "echo", "arguments": {"s": "hi"}}\n</tool_call>'
    whole = finish_message(request, text, "stop")
    assert whole.finish_reason == "tool_calls" and whole.content.strip() == "Let me check."
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    stream = ToolCallStream(request)
    content, calls, reason = _assemble(stream, pieces, "stop")
    assert "<tool_call>" not in content and content.strip() == "Let me check." and reason == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("echo", {"s": "hi"})]
    plain = finish_message(request, "no calls here", "stop")
    assert plain.content == "no calls here" and plain.tool_calls == [] and plain.finish_reason == "stop"

"""Tools on the chat API: validating `tools` and `tool_choice`, forcing calls with a grammar,
and turning generated text into OpenAI `tool_calls` (whole, or as streamed deltas).

- a named choice constrains the output to that function's `parameters` schema: the whole
  output is the call's arguments (finish reason "stop", as OpenAI reports it);
- `required` constrains it to a JSON array of `{"name", "parameters"}` calls of the listed
  functions (one call unless `parallel_tool_calls`), finish reason "tool_calls";
- `auto` lets the model write freely and parses its output with the server's
  `--tool-call-parser`; `none` parses nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.entrypoints.openai.protocol import check_constraint_size
from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser
from pagedllm.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser
from pagedllm.structured_output.schema_support import check_schema
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolRequest:
    """A request's validated tools and what it asks of them."""

    tools: list[dict[str, Any]]
    choice: str  # "none" | "auto" | "required" | "named"
    named: str | None = None
    parallel: bool = True
    parser: ToolParser | None = None  # for "auto"
    schemas: dict[str, dict] = field(default_factory=dict)  # function name -> parameters schema

    def constraint(self) -> StructuredOutputsParams | None:
        """The grammar that forces the calls (named and required choices)."""
        if self.choice == "named":
            return StructuredOutputsParams(json=self.schemas[self.named])
        if self.choice == "required":
            calls = [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "parameters": schema},
                    "required": ["name", "parameters"],
                }
                for name, schema in self.schemas.items()
            ]
            array = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
            if not self.parallel:
                array["maxItems"] = 1
            return StructuredOutputsParams(json=array)
        return None


def parse_tool_request(req, auto_tool_choice: bool, tool_parser_name: str | None) -> ToolRequest | None:
    """Validate `tools`, `tool_choice` and `parallel_tool_calls`; None when no tools are in play."""
    if req.functions:
        raise bad_request("the legacy 'functions' field is not supported; send 'tools'", "functions")
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    schemas = {}
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
        ):
            raise bad_request(
                "a tool is {'type': 'function', 'function': {'name': ..., 'parameters': {...}}}", where
            )
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise bad_request(
                f"a function name is 1-64 letters, digits, '_', '-', '.' or ':', got {name!r}", where
            )
        if name in schemas:
            raise bad_request(f"two tools are named {name!r}", where)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise bad_request(f"function {name!r}: parameters must be a JSON schema object", where)
        try:
            check_schema(parameters, f"#/tools/{i}/function/parameters")
        except StructuredOutputsError as exc:
            raise bad_request(f"function {name!r}: {exc}", where) from exc
        schemas[name] = parameters
    check_constraint_size(list(schemas.values()), "tools")
    request = ToolRequest(
        tools=tools, choice="auto", parallel=req.parallel_tool_calls is not False, schemas=schemas
    )
    if choice is None or choice == "auto":
        if not (auto_tool_choice and tool_parser_name):
            raise bad_request(
                "tool_choice 'auto' (the default when tools are given) needs the server started with "
                "--enable-auto-tool-choice --tool-call-parser NAME; or send tool_choice 'required', "
                "'none' or a named function",
                "tool_choice",
            )
        request.parser = get_tool_parser(tool_parser_name)
    elif choice in ("none", "required"):
        request.choice = choice
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        name = choice["function"].get("name")
        if name not in schemas:
            raise bad_request(
                f"tool_choice names {name!r}, which is not among the tools {sorted(schemas)}", "tool_choice"
            )
        request.choice, request.named = "named", name
    else:
        raise bad_request(
            "tool_choice is 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
        )
    return request


def openai_tool_call(call: ToolCall, call_id: str | None = None) -> dict:
    return {
        "id": call_id or new_tool_call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def required_calls(text: str) -> list[ToolCall] | None:
    """The calls of a `required` choice's output (a JSON array), or None if it does not parse."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        calls.append(ToolCall(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False)))
    return calls


@dataclass
class ChatMessage:
    """What one choice's text became: content and tool calls, and the finish reason to report."""

    content: str | None
    tool_calls: list[dict]
    finish_reason: str | None


def finish_message(tool_request: ToolRequest | None, text: str, finish_reason: str | None) -> ChatMessage:
    """A whole choice's text as a chat message, calls extracted as the request's choice says."""
    if tool_request is None or tool_request.choice == "none":
        return ChatMessage(text, [], finish_reason)
    if tool_request.choice == "named":
        if finish_reason == "length":  # truncated arguments are not a call
            return ChatMessage(text, [], finish_reason)
        call = ToolCall(tool_request.named, _compact(text))
        return ChatMessage(None, [openai_tool_call(call)], finish_reason)
    if tool_request.choice == "required":
        calls = required_calls(text)
        if calls is None:
            return ChatMessage(text, [], finish_reason)
        return ChatMessage(None, [openai_tool_call(c) for c in calls], "tool_calls")
    extracted = tool_request.parser.extract(text)
    if not extracted.tool_calls:
        return ChatMessage(extracted.content if extracted.content is not None else text, [], finish_reason)
    reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return ChatMessage(extracted.content, [openai_tool_call(c) for c in extracted.tool_calls], reason)


def _compact(text: str) -> str:
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except json.JSONDecodeError:
        return text


class ToolCallStream:
    """One choice's streamed deltas: content, and tool calls in OpenAI's delta shape."""

    def __init__(self, tool_request: ToolRequest | None):
        self.request = tool_request
        self.choice = tool_request.choice if tool_request is not None else "none"
        self.text = ""
        self.ids: dict[int, str] = {}
        self.saw_calls = False
        self.streaming = tool_request.parser.streaming() if self.choice == "auto" else None
        self.named_id = new_tool_call_id() if self.choice == "named" else None

    def feed(self, text: str) -> dict:
        """The delta for new text (may be empty while text is held back)."""
        self.text += text
        if self.choice == "none":
            return {"content": text} if text else {}
        if self.choice == "named":
            if not text:
                return {}
            call = {"index": 0, "function": {"arguments": text}}
            if not self.saw_calls:
                self.saw_calls = True
                call.update(id=self.named_id, type="function")
                call["function"] = {"name": self.request.named, "arguments": text}
            return {"tool_calls": [call]}
        if self.choice == "required":
            return {}  # a JSON array: sent whole once it is complete
        return self._delta(self.streaming.feed(text))

    def finish(self, finish_reason: str | None) -> tuple[list[dict], str | None]:
        """Deltas for what was held back, and the finish reason to report."""
        if self.choice == "required":
            calls = required_calls(self.text) if finish_reason != "length" else None
            if calls is None:
                return ([{"content": self.text}] if self.text else []), finish_reason
            deltas = []
            for index, call in enumerate(calls):
                call_id = new_tool_call_id()
                deltas.append(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
            return deltas, "tool_calls"
        if self.choice == "auto":
            delta = self._delta(self.streaming.finish())
            reason = "tool_calls" if self.saw_calls and finish_reason == "stop" else finish_reason
            return ([delta] if delta else []), reason
        return [], finish_reason

    def _delta(self, message) -> dict:
        delta: dict = {}
        if message.content:
            delta["content"] = message.content
        by_index: dict[int, dict] = {}  # one entry per call and chunk, as clients expect
        for d in message.tool_calls:
            entry = by_index.get(d.index)
            if entry is None:
                entry = by_index[d.index] = {"index": d.index, "function": {"arguments": ""}}
                if d.index not in self.ids:
                    self.ids[d.index] = new_tool_call_id()
                    self.saw_calls = True
                    entry.update(id=self.ids[d.index], type="function")
                    entry["function"] = {"name": d.name, "arguments": ""}
            entry["function"]["arguments"] += d.arguments
        if by_index:
            delta["tool_calls"] = list(by_index.values())
        return delta

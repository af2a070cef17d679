"""The tool-call parser interface, and helpers the parsers share.

A parser turns a model's output into content and tool calls, either whole (`extract`) or
piece by piece as it is generated (`streaming`). Every parser here computes `extract` by
running its streaming state machine over the whole text at once; the machines decide only
from the characters seen, never from where the pieces were cut, so any split of the text
streams exactly what `extract` returns.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class ToolCall:
    """One complete call: the function's name and its arguments as compact JSON text."""

    name: str
    arguments: str  # json.dumps(obj, ensure_ascii=False) of the arguments object


@dataclass
class ExtractedToolCalls:
    """A whole output split into the text outside the calls and the calls themselves."""

    content: str | None  # None when empty or whitespace-only
    tool_calls: list[ToolCall]


@dataclass
class ToolCallDelta:
    """A piece of one streamed call: its name (first delta only) or more argument text."""

    index: int  # 0, 1, ... in order of appearance in this output
    name: str | None = None
    arguments: str = ""


@dataclass
class DeltaMessage:
    """What one piece of generated text released: content and tool-call deltas."""

    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class StreamingToolParser(ABC):
    """Per-request streaming state: fed the generated text piece by piece."""

    @abstractmethod
    def feed(self, delta_text: str) -> DeltaMessage:
        """Take the next piece of generated text; return what can be released now."""

    @abstractmethod
    def finish(self) -> DeltaMessage:
        """The output has ended: release what was held back."""


class ToolParser:
    """A model family's tool-call wire format: its streaming parser, run over the whole text
    for `extract`, so that whole and streamed outputs always agree."""

    name: ClassVar[str]
    stream_class: ClassVar[type[StreamingToolParser]]

    def extract(self, text: str) -> ExtractedToolCalls:
        """Split a whole model output into content and tool calls (never raises)."""
        return extract_by_streaming(self.streaming(), text)

    def streaming(self) -> StreamingToolParser:
        """Fresh streaming state for one request."""
        return self.stream_class()


def extract_by_streaming(stream: StreamingToolParser, text: str) -> ExtractedToolCalls:
    """Run a fresh stream over the whole text and assemble its deltas.

    With calls, the content is stripped (it is the text between markup, whose surrounding
    whitespace is formatting); without calls it is the original text untouched.
    """
    messages = [stream.feed(text), stream.finish()]
    content = "".join(m.content for m in messages)
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in (d for m in messages for d in m.tool_calls):
        if delta.name is not None:
            names.setdefault(delta.index, delta.name)
        arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    calls = [ToolCall(names[i], arguments.get(i, "")) for i in sorted(names)]
    if calls:
        content = content.strip()
    return ExtractedToolCalls(content=content if content.strip() else None, tool_calls=calls)


def emit_calls(out: DeltaMessage, calls: list[ToolCall], first_index: int) -> int:
    """Append each call as a name delta then an arguments delta; return the next index."""
    index = first_index
    for call in calls:
        out.tool_calls.append(ToolCallDelta(index=index, name=call.name))
        out.tool_calls.append(ToolCallDelta(index=index, arguments=call.arguments))
        index += 1
    return index


def make_tool_call(name: Any, arguments: Any) -> ToolCall | None:
    """A call from a parsed name and arguments, or None when either is unusable.

    The arguments must be an object, or a JSON string holding one (some models double-encode).
    """
    if not isinstance(name, str) or not name.strip():
        return None
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    try:
        # NaN and Infinity are not JSON: a client's parser would reject them.
        text = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return ToolCall(name=name, arguments=text)


def call_from_json(obj: Any, argument_keys: tuple[str, ...] = ("arguments",)) -> ToolCall | None:
    """A call from a decoded `{"name": ..., <argument key>: {...}}` object, or None."""
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    for key in argument_keys:
        if key in obj:
            return make_tool_call(obj["name"], obj[key])
    return None


def loads_or_none(text: str) -> Any:
    """`json.loads`, with None for anything that does not decode (None is never a valid call)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def held_suffix_length(text: str, *tags: str) -> int:
    """Length of the longest end of `text` that is a proper start of one of `tags`.

    That much must be held back: the next piece may complete the tag.
    """
    longest = 0
    for tag in tags:
        for size in range(min(len(tag) - 1, len(text)), longest, -1):
            if text.endswith(tag[:size]):
                longest = size
                break
    return longest


class JsonSpanScanner:
    """Finds where one JSON object or array ends, in text that arrives in pieces.

    It only balances brackets outside strings; whether the span is valid JSON is for
    `json.loads` to say once it is complete.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def feed(self, text: str) -> int | None:
        """Consume `text`; return the offset just past the value's end, or None if it goes on."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "[{":
                self.depth += 1
            elif ch in "]}":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return None

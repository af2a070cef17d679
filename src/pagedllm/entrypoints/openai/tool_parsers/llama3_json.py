"""Llama 3.1/3.2 JSON calls.

    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}
    {"name": "a", "parameters": {}}; {"name": "b", "arguments": {"x": 1}}

The calls start at the first `{` or `<|python_tag|>`: from there to the end the output must
be one or more call objects separated by `;` (whitespace around them, one trailing `;`, and a
leading `<|python_tag|>` allowed), each with a name and a `parameters` (or `arguments`) object.
Text before that point is content. If the rest is anything else, the whole output is content.

Streaming: text before the first `{` or `<|python_tag|>` is released at once. From there on
everything is held, since only the end of the output shows that nothing but calls followed;
the calls are released by `finish`. Held text is released as content as soon as it cannot be
calls any more (prose with a brace in it streams on at that point).
"""

from __future__ import annotations

import enum
from typing import ClassVar

from pagedllm.entrypoints.openai.tool_parsers.base import (
    DeltaMessage,
    JsonSpanScanner,
    StreamingToolParser,
    ToolCall,
    ToolParser,
    call_from_json,
    emit_calls,
    held_suffix_length,
    loads_or_none,
)

PYTHON_TAG = "<|python_tag|>"
_ARGUMENT_KEYS = ("parameters", "arguments")


class _State(enum.Enum):
    PREFIX = enum.auto()  # content before the calls
    EXPECT_OBJECT = enum.auto()  # whitespace, then `{`
    OBJECT = enum.auto()  # inside a call object
    AFTER_OBJECT = enum.auto()  # whitespace, then `;` or the end
    AFTER_SEMICOLON = enum.auto()  # whitespace, then `{` or the end
    PLAIN = enum.auto()  # not calls after all: everything is content


class Llama3JsonStreamingParser(StreamingToolParser):
    """Content streams up to the first `{` or tag; after that, held until decided."""

    def __init__(self) -> None:
        self._state = _State.PREFIX
        self._pending = ""  # text not yet consumed
        self._held = ""  # the consumed text from the start of the calls on
        self._object = ""  # the current call object's text so far
        self._scanner = JsonSpanScanner()
        self._checked = False  # the object's first inner character has been seen and is `"` or `}`
        self._calls: list[ToolCall] = []

    def feed(self, delta_text: str) -> DeltaMessage:
        """Take the next piece of text."""
        self._pending += delta_text
        out = DeltaMessage()
        while self._pending and self._step(out):
            pass
        return out

    def finish(self) -> DeltaMessage:
        """Release the calls if the output ended right after one; otherwise the held text."""
        out = DeltaMessage()
        if self._state in (_State.AFTER_OBJECT, _State.AFTER_SEMICOLON):
            emit_calls(out, self._calls, 0)
        else:
            out.content = self._held + self._pending
        self._held = self._pending = ""
        self._calls = []
        self._state = _State.PLAIN
        return out

    def _step(self, out: DeltaMessage) -> bool:
        """Consume what can be decided; True if another step may decide more."""
        pending = self._pending
        state = self._state
        if state is _State.PLAIN:
            out.content += pending
            self._pending = ""
            return False
        if state is _State.PREFIX:
            brace, tag = pending.find("{"), pending.find(PYTHON_TAG)
            starts = [i for i in (brace, tag) if i >= 0]
            if not starts:
                keep = held_suffix_length(pending, PYTHON_TAG)
                out.content += pending[: len(pending) - keep]
                self._pending = pending[len(pending) - keep :]
                return False
            start = min(starts)
            out.content += pending[:start]
            if start == tag:
                self._held = PYTHON_TAG
                self._pending = pending[start + len(PYTHON_TAG) :]
            else:
                self._pending = pending[start:]
            self._state = _State.EXPECT_OBJECT
            return True
        if state is not _State.OBJECT:
            stripped = pending.lstrip()
            self._held += pending[: len(pending) - len(stripped)]
            self._pending = stripped
            if not stripped:
                return False
            first = stripped[0]
            if state is not _State.AFTER_OBJECT and first == "{":
                self._object, self._scanner, self._checked = "", JsonSpanScanner(), False
                self._state = _State.OBJECT
            elif state is _State.AFTER_OBJECT and first == ";":
                self._held += ";"
                self._pending = stripped[1:]
                self._state = _State.AFTER_SEMICOLON
            else:
                self._fail(out)
            return True
        end = self._scanner.feed(pending)
        taken = pending if end is None else pending[:end]
        self._object += taken
        self._held += taken
        self._pending = pending[len(taken) :]
        if not self._checked:
            inside = self._object[1:].lstrip()
            if inside and inside[0] not in '"}':
                self._fail(out)  # `{x...` is prose, not a call object: stop holding early
                return True
            self._checked = bool(inside)
        if end is None:
            return False
        call = call_from_json(loads_or_none(self._object), _ARGUMENT_KEYS)
        if call is None:
            self._fail(out)
        else:
            self._calls.append(call)
            self._state = _State.AFTER_OBJECT
        return True

    def _fail(self, out: DeltaMessage) -> None:
        out.content += self._held
        self._held = ""
        self._calls = []
        self._state = _State.PLAIN


class Llama3JsonToolParser(ToolParser):
    """JSON call objects, `;`-separated, optionally after `<|python_tag|>`."""

    name: ClassVar[str] = "llama3_json"
    stream_class: ClassVar[type[StreamingToolParser]] = Llama3JsonStreamingParser

"""Mistral calls, in both of the forms Mistral models write.

    Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    [TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]add[ARGS]{"a": 1}

After each `[TOOL_CALLS]` marker (and optional whitespace) comes a JSON array of call
objects, a single call object, or `name[ARGS]` and the arguments object. Each marker's block
is judged by itself: a well-formed one becomes calls; a malformed or unfinished one stays in
the content verbatim, marker included. Text before the first marker, and after a block's
JSON ends, is content.
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
    make_tool_call,
)

MARKER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
_ARGUMENT_KEYS = ("arguments", "parameters")


class _State(enum.Enum):
    TEXT = enum.auto()  # content, watching for the marker
    AFTER_MARKER = enum.auto()  # whitespace, then the block's form shows
    NAME = enum.auto()  # `name`, until `[ARGS]`
    AFTER_ARGS = enum.auto()  # whitespace, then the arguments object
    JSON = enum.auto()  # inside the block's JSON value


class MistralStreamingParser(StreamingToolParser):
    """Content streams until a (possible) marker; a block is released once its JSON closes."""

    def __init__(self) -> None:
        self._state = _State.TEXT
        self._pending = ""  # text not yet consumed
        self._block = ""  # the current block's raw text so far, given back as content if it fails
        self._name = ""  # the `name[ARGS]` form's name
        self._json = ""  # the block's JSON text so far
        self._scanner = JsonSpanScanner()
        self._next_index = 0

    def feed(self, delta_text: str) -> DeltaMessage:
        """Take the next piece of text."""
        self._pending += delta_text
        out = DeltaMessage()
        while self._pending and self._step(out):
            pass
        return out

    def finish(self) -> DeltaMessage:
        """Release held text: a partial marker or an unfinished block is content."""
        out = DeltaMessage(content=self._block + self._pending)
        self._block = self._pending = ""
        self._state = _State.TEXT
        return out

    def _step(self, out: DeltaMessage) -> bool:
        """Consume what can be decided; True if another step may decide more."""
        pending = self._pending
        if self._state is _State.TEXT:
            start = pending.find(MARKER)
            if start < 0:
                keep = held_suffix_length(pending, MARKER)
                out.content += pending[: len(pending) - keep]
                self._pending = pending[len(pending) - keep :]
                return False
            out.content += pending[:start]
            self._block, self._name, self._json = MARKER, "", ""
            self._pending = pending[start + len(MARKER) :]
            self._state = _State.AFTER_MARKER
            return True
        if self._state in (_State.AFTER_MARKER, _State.AFTER_ARGS):
            stripped = pending.lstrip()
            self._block += pending[: len(pending) - len(stripped)]
            self._pending = stripped
            if not stripped:
                return False
            first = stripped[0]
            if first == "{" or (first == "[" and self._state is _State.AFTER_MARKER):
                self._scanner = JsonSpanScanner()
                self._state = _State.JSON
            elif first in _NAME_CHARS and self._state is _State.AFTER_MARKER:
                self._state = _State.NAME
            else:
                self._fail(out)
            return True
        if self._state is _State.NAME:
            end = 0
            while end < len(pending) and pending[end] in _NAME_CHARS:
                end += 1
            self._name += pending[:end]
            self._block += pending[:end]
            rest = self._pending = pending[end:]
            if not rest or (len(rest) < len(ARGS) and ARGS.startswith(rest)):
                return False  # the name may go on, or `[ARGS]` is arriving
            if rest.startswith(ARGS):
                self._block += ARGS
                self._pending = rest[len(ARGS) :]
                self._state = _State.AFTER_ARGS
            else:
                self._fail(out)
            return True
        end = self._scanner.feed(pending)
        taken = pending if end is None else pending[:end]
        self._json += taken
        self._block += taken
        self._pending = pending[len(taken) :]
        if end is None:
            return False
        calls = self._calls()
        if calls is None:
            self._fail(out)
        else:
            self._next_index = emit_calls(out, calls, self._next_index)
            self._block = ""
            self._state = _State.TEXT
        return True

    def _calls(self) -> list[ToolCall] | None:
        value = loads_or_none(self._json)
        if self._name:
            call = make_tool_call(self._name, value) if isinstance(value, dict) else None
            return None if call is None else [call]
        items = value if isinstance(value, list) else [value]
        calls = [call_from_json(item, _ARGUMENT_KEYS) for item in items]
        if not calls or None in calls:
            return None
        return calls

    def _fail(self, out: DeltaMessage) -> None:
        # The block so far is content; what follows it is read afresh (it may hold a marker).
        out.content += self._block
        self._block = ""
        self._state = _State.TEXT


class MistralToolParser(ToolParser):
    """`[TOOL_CALLS]` followed by a JSON array of calls, or by `name[ARGS]{...}`."""

    name: ClassVar[str] = "mistral"
    stream_class: ClassVar[type[StreamingToolParser]] = MistralStreamingParser

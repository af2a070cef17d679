"""Pythonic calls (Llama 3.2 / Llama 4 style): a Python list of keyword-argument calls.

    [get_weather(city="Oslo"), add(a=1, b=2.5, tags=["x", None])]

The whole output (whitespace and `<|python_start|>`/`<|python_end|>` wrappers aside) must
be the list; otherwise it is all content. The list is read with `ast` and each argument with
`ast.literal_eval`, so nothing the model writes is ever run. Names may be dotted
(`tools.search(...)`); positional arguments and `**kwargs` make the output content.

Streaming: leading whitespace is held; an output that opens like `[name(` (after the optional
wrapper tag) is held to the end and released by `finish`, as only the end shows that nothing
but the list was written. Anything else is content from the first character that rules the
list out.
"""

from __future__ import annotations

import ast
import enum
from typing import ClassVar

from pagedllm.entrypoints.openai.tool_parsers.base import (
    DeltaMessage,
    StreamingToolParser,
    ToolCall,
    ToolParser,
    emit_calls,
    make_tool_call,
)

START_TAG = "<|python_start|>"
END_TAG = "<|python_end|>"
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT = _IDENT_START | frozenset("0123456789.")


class _State(enum.Enum):
    LEAD = enum.auto()  # whitespace, then `[` or the start tag
    TAG = enum.auto()  # inside the start tag
    AFTER_TAG = enum.auto()  # whitespace, then `[`
    OPEN = enum.auto()  # after `[`: whitespace, then a name
    NAME = enum.auto()  # the first call's name
    AFTER_NAME = enum.auto()  # whitespace, then `(`
    HOLD = enum.auto()  # looks like calls: held to the end
    PLAIN = enum.auto()  # not calls: everything is content


class PythonicStreamingParser(StreamingToolParser):
    """Holds an output that opens like a call list; streams anything else as content."""

    def __init__(self) -> None:
        self._state = _State.LEAD
        self._held = ""  # everything so far, while the output may still be calls

    def feed(self, delta_text: str) -> DeltaMessage:
        """Take the next piece of text."""
        out = DeltaMessage()
        for i, ch in enumerate(delta_text):
            if self._state is _State.HOLD:
                self._held += delta_text[i:]
                break
            if self._state is _State.PLAIN:
                out.content += delta_text[i:]
                break
            self._held += ch
            self._state = self._advance(ch)
            if self._state is _State.PLAIN:
                out.content += self._held
                self._held = ""
        return out

    def finish(self) -> DeltaMessage:
        """Release the calls if the held text is a call list; otherwise it is content."""
        out = DeltaMessage()
        calls = parse_call_list(self._held) if self._state is _State.HOLD else None
        if calls:
            emit_calls(out, calls, 0)
        else:
            out.content = self._held
        self._held = ""
        self._state = _State.PLAIN
        return out

    def _advance(self, ch: str) -> _State:
        """The state after `ch` (already appended to the held text)."""
        state = self._state
        space = ch.isspace()
        if state is _State.LEAD:
            if space:
                return state
            return _State.OPEN if ch == "[" else _State.TAG if ch == START_TAG[0] else _State.PLAIN
        if state is _State.TAG:
            tag = self._held.lstrip()  # only whitespace came before the tag
            if not START_TAG.startswith(tag):
                return _State.PLAIN
            return _State.AFTER_TAG if tag == START_TAG else state
        if state is _State.AFTER_TAG:
            return state if space else _State.OPEN if ch == "[" else _State.PLAIN
        if state is _State.OPEN:
            return state if space else _State.NAME if ch in _IDENT_START else _State.PLAIN
        if state is _State.NAME and ch in _IDENT:
            return state
        if space:
            return _State.AFTER_NAME
        return _State.HOLD if ch == "(" else _State.PLAIN


def parse_call_list(text: str) -> list[ToolCall] | None:
    """The calls of a pythonic call list, or None if `text` is not exactly one."""
    body = text.strip()
    if body.startswith(START_TAG):
        body = body[len(START_TAG) :].strip()
    if body.endswith(END_TAG):
        body = body[: -len(END_TAG)].strip()
    try:
        tree = ast.parse(body, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        call = _call(node)
        if call is None:
            return None
        calls.append(call)
    return calls


def _call(node: ast.expr) -> ToolCall | None:
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _dotted_name(node.func)
    if name is None:
        return None
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **kwargs
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return make_tool_call(name, arguments)


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted_name(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


class PythonicToolParser(ToolParser):
    """`[name(key=literal, ...), ...]`."""

    name: ClassVar[str] = "pythonic"
    stream_class: ClassVar[type[StreamingToolParser]] = PythonicStreamingParser

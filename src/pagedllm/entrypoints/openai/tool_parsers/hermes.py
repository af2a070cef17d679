"""Hermes-style calls (Qwen2.5/Qwen3, Hermes, many fine-tunes).

    Let me check.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

Each `<tool_call>...</tool_call>` block is judged by itself: a block whose JSON is a call
becomes a tool call; a block that is not (broken JSON, no name, arguments not an object) or
never closes stays in the content verbatim, tags included. Text before, between and after
blocks is content.
"""

from __future__ import annotations

from typing import ClassVar

from pagedllm.entrypoints.openai.tool_parsers.base import (
    DeltaMessage,
    StreamingToolParser,
    ToolParser,
    call_from_json,
    emit_calls,
    held_suffix_length,
    loads_or_none,
)

START_TAG = "<tool_call>"
END_TAG = "</tool_call>"


class HermesStreamingParser(StreamingToolParser):
    """Content streams until a (possible) start tag; a block is released once it closes."""

    def __init__(self) -> None:
        self._pending = ""  # text not yet released
        self._in_block = False  # `_pending` is the body of an open block (start tag consumed)
        self._search_from = 0  # in a block, where the end tag may still start
        self._next_index = 0

    def feed(self, delta_text: str) -> DeltaMessage:
        """Take the next piece of text."""
        self._pending += delta_text
        out = DeltaMessage()
        while self._step(out):
            pass
        return out

    def finish(self) -> DeltaMessage:
        """Release held text: a partial start tag or an unclosed block is content."""
        out = DeltaMessage(content=(START_TAG if self._in_block else "") + self._pending)
        self._pending, self._in_block = "", False
        return out

    def _step(self, out: DeltaMessage) -> bool:
        """Consume what can be decided; True if another step may decide more."""
        if not self._in_block:
            start = self._pending.find(START_TAG)
            if start < 0:
                keep = held_suffix_length(self._pending, START_TAG)
                out.content += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                return False
            out.content += self._pending[:start]
            self._pending = self._pending[start + len(START_TAG) :]
            self._in_block, self._search_from = True, 0
            return True
        end = self._pending.find(END_TAG, self._search_from)
        if end < 0:
            self._search_from = max(0, len(self._pending) - len(END_TAG) + 1)
            return False
        body = self._pending[:end]
        self._pending = self._pending[end + len(END_TAG) :]
        self._in_block = False
        call = call_from_json(loads_or_none(body.strip()))
        if call is None:
            out.content += START_TAG + body + END_TAG
        else:
            self._next_index = emit_calls(out, [call], self._next_index)
        return True


class HermesToolParser(ToolParser):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks."""

    name: ClassVar[str] = "hermes"
    stream_class: ClassVar[type[StreamingToolParser]] = HermesStreamingParser

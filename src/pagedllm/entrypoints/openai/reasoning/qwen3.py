"""Qwen3 style reasoning: an output that opens with `<think>` and closes it with `</think>`.

Reasoning is only recognised when the output (after leading whitespace) starts with
`<think>` and the matching `</think>` follows; the text after the end tag is content. An
output without that shape (thinking turned off, or a thought cut off before its end tag) is
all content, verbatim.

Streaming consequence: after `<think>` nothing can be released until `</think>` arrives (only
then is it known to be reasoning), so the whole thought is released at once when it closes.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from pagedllm.entrypoints.openai.reasoning.base import (
    ReasoningParser,
    ReasoningSplit,
    StreamingReasoningParser,
    StrippedStream,
)


class Qwen3ReasoningParser(ReasoningParser):
    """`<think>...</think>` at the start of the output; anything else is content."""

    name: ClassVar[str] = "qwen3"

    def extract(self, text: str) -> ReasoningSplit:
        """Split a whole output; without a complete think block all of it is content."""
        lead = text.lstrip()
        if lead.startswith(self.start_tag):
            end = lead.find(self.end_tag, len(self.start_tag))
            if end >= 0:
                reasoning = lead[len(self.start_tag) : end].strip()
                content = lead[end + len(self.end_tag) :].lstrip()
                return ReasoningSplit(reasoning_content=reasoning or None, content=content or None)
        return ReasoningSplit(reasoning_content=None, content=text or None)

    def streaming(self) -> Qwen3StreamingParser:
        """Fresh streaming state."""
        return Qwen3StreamingParser(self.start_tag, self.end_tag)


class _State(enum.Enum):
    START = enum.auto()  # whitespace and a possible `<think>`
    THINKING = enum.auto()  # inside the think block: held until it closes
    CONTENT = enum.auto()  # after `</think>`
    PLAIN = enum.auto()  # no think block: everything is content as is


class Qwen3StreamingParser(StreamingReasoningParser):
    """Holds a think block until it closes; streams content as it comes."""

    def __init__(self, start_tag: str, end_tag: str) -> None:
        self._start_tag, self._end_tag = start_tag, end_tag
        self._state = _State.START
        self._held = ""  # the output so far, while it is undecided
        self._body_start = 0  # in `_held`, where the thought begins (after `<think>`)
        self._search_from = 0  # in `_held`, where `</think>` may still begin
        self._content = StrippedStream(strip_end=False)
        self._ended = False

    @property
    def reasoning_ended(self) -> bool:
        """True once the think block's `</think>` has been seen."""
        return self._ended

    def feed(self, delta_text: str) -> tuple[str, str]:
        """Take the next piece of text."""
        if self._state is _State.CONTENT:
            return "", self._content.push(delta_text)
        if self._state is _State.PLAIN:
            return "", delta_text
        self._held += delta_text
        if self._state is _State.START:
            lead = self._held.lstrip()
            if len(lead) < len(self._start_tag) and self._start_tag.startswith(lead):
                return "", ""  # may still become `<think>`
            if not lead.startswith(self._start_tag):
                text, self._held = self._held, ""
                self._state = _State.PLAIN
                return "", text
            self._body_start = self._search_from = len(self._held) - len(lead) + len(self._start_tag)
            self._state = _State.THINKING
        end = self._held.find(self._end_tag, self._search_from)
        if end < 0:
            self._search_from = max(self._body_start, len(self._held) - len(self._end_tag) + 1)
            return "", ""
        thought = self._held[self._body_start : end].strip()
        rest = self._held[end + len(self._end_tag) :]
        self._held = ""
        self._state, self._ended = _State.CONTENT, True
        return thought, self._content.push(rest)

    def finish(self) -> tuple[str, str]:
        """Release held text: an unclosed (or unopened) think block is content, verbatim."""
        text, self._held = self._held, ""
        if self._state in (_State.START, _State.THINKING):
            self._state = _State.PLAIN
            return "", text
        return "", ""

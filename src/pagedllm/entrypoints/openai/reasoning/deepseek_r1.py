"""DeepSeek-R1 style reasoning: the output thinks first, then ends the thought with `</think>`.

The chat template usually opens `<think>` in the prompt, so the output may or may not begin
with it. Everything before `</think>` (less a leading `<think>`) is reasoning and the rest
content; an output that never closes the thought is all reasoning.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from pagedllm.entrypoints.openai.reasoning.base import (
    ReasoningParser,
    ReasoningSplit,
    StreamingReasoningParser,
    StrippedStream,
    partial_tag_length,
)


class DeepSeekR1ReasoningParser(ReasoningParser):
    """Reasoning up to `</think>`, whether or not the output opened with `<think>`."""

    name: ClassVar[str] = "deepseek_r1"

    def extract(self, text: str) -> ReasoningSplit:
        """Split a whole output; without an end tag all of it is reasoning."""
        body = text
        lead = text.lstrip()
        if lead.startswith(self.start_tag):
            body = lead[len(self.start_tag) :]
        end = body.find(self.end_tag)
        if end < 0:
            return ReasoningSplit(reasoning_content=body.strip() or None, content=None)
        reasoning = body[:end].strip()
        content = body[end + len(self.end_tag) :].lstrip()
        return ReasoningSplit(reasoning_content=reasoning or None, content=content or None)

    def streaming(self) -> DeepSeekR1StreamingParser:
        """Fresh streaming state."""
        return DeepSeekR1StreamingParser(self.start_tag, self.end_tag)


class _State(enum.Enum):
    START = enum.auto()  # whitespace and a possible `<think>`
    REASONING = enum.auto()
    CONTENT = enum.auto()


class DeepSeekR1StreamingParser(StreamingReasoningParser):
    """Streams reasoning until `</think>`, then content; partial tags are held back."""

    def __init__(self, start_tag: str, end_tag: str) -> None:
        self._start_tag, self._end_tag = start_tag, end_tag
        self._state = _State.START
        self._pending = ""  # text not yet sorted into either stream
        self._reasoning = StrippedStream()
        self._content = StrippedStream(strip_end=False)
        self._ended = False

    @property
    def reasoning_ended(self) -> bool:
        """True once `</think>` has been seen."""
        return self._ended

    def feed(self, delta_text: str) -> tuple[str, str]:
        """Take the next piece of text."""
        if self._state is _State.CONTENT:
            return "", self._content.push(delta_text)
        self._pending += delta_text
        if self._state is _State.START:
            lead = self._pending.lstrip()
            if len(lead) < len(self._start_tag) and self._start_tag.startswith(lead):
                return "", ""  # may still become `<think>`
            if lead.startswith(self._start_tag):
                self._pending = lead[len(self._start_tag) :]
            self._state = _State.REASONING
        end = self._pending.find(self._end_tag)
        if end < 0:
            keep = partial_tag_length(self._pending, self._end_tag)
            thought = self._reasoning.push(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
            return thought, ""
        thought = self._reasoning.push(self._pending[:end])
        self._reasoning.end()
        rest = self._pending[end + len(self._end_tag) :]
        self._pending = ""
        self._state, self._ended = _State.CONTENT, True
        return thought, self._content.push(rest)

    def finish(self) -> tuple[str, str]:
        """Release held text: before the end tag it is reasoning (a partial tag included)."""
        if self._state is _State.CONTENT:
            return "", ""
        thought = self._reasoning.push(self._pending)
        self._reasoning.end()
        self._pending = ""
        self._state = _State.CONTENT
        return thought, ""

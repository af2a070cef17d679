"""The reasoning parser interface: split a thinking model's output into reasoning and content.

Whitespace: reasoning is reported stripped (`.strip()`), and content after the end tag with
its leading whitespace removed (`.lstrip()`): the newlines models put around the tags are
formatting, not text. Streaming agrees exactly: whitespace that may turn out to be at the
edge is held until a later character (or the end) shows whether it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


@dataclass
class ReasoningSplit:
    """A whole output's reasoning and content (None where there is none)."""

    reasoning_content: str | None
    content: str | None


class StreamingReasoningParser(ABC):
    """Per-request streaming state: fed the generated text piece by piece."""

    @abstractmethod
    def feed(self, delta_text: str) -> tuple[str, str]:
        """Take the next piece of text; return the (reasoning, content) it releases."""

    @abstractmethod
    def finish(self) -> tuple[str, str]:
        """The output has ended: release what was held back as (reasoning, content)."""

    @property
    @abstractmethod
    def reasoning_ended(self) -> bool:
        """True once the end tag has been seen."""


class ReasoningParser(ABC):
    """A model family's way of marking its reasoning."""

    name: ClassVar[str]
    start_tag: ClassVar[str] = "<think>"
    end_tag: ClassVar[str] = "</think>"

    @abstractmethod
    def extract(self, text: str) -> ReasoningSplit:
        """Split a whole output into reasoning and content."""

    @abstractmethod
    def streaming(self) -> StreamingReasoningParser:
        """Fresh streaming state for one request."""


def partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag` (to be held back)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class StrippedStream:
    """Releases a stream's text with its leading and trailing whitespace removed.

    Leading whitespace is dropped; trailing whitespace is held until more text follows it
    (then it was inner whitespace) or the stream ends (then it is dropped).
    """

    def __init__(self, strip_end: bool = True) -> None:
        self.strip_end = strip_end
        self._started = False
        self._held = ""

    def push(self, text: str) -> str:
        """More text of this stream; return what can be released."""
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        text = self._held + text
        if not self.strip_end:
            self._held = ""
            return text
        body = text.rstrip()
        self._held = text[len(body) :]
        return body

    def end(self) -> None:
        """The stream is over: its trailing whitespace is dropped."""
        self._held = ""

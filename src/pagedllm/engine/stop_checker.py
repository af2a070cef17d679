"""A sequence's output text: stop-string detection, truncation and streaming hold-back.

The text is kept as a list of chunks, so appending a delta, searching for stop strings
near the end and cutting a streaming delta all cost O(delta + longest stop string),
never O(text length). `text()` joins the chunks only when the whole text is wanted.
"""

from __future__ import annotations


class StopChecker:
    """Accumulates detokenized text and ends it at the first stop string.

    A stop string may span token boundaries: each search covers the new text plus the
    `len(stop) - 1` characters before it. While streaming, the last `len(longest) - 1`
    characters are held back (they might be the start of a stop string that would then
    be cut); `include_stop_str_in_output` needs no hold-back, since text is then only
    ever cut after the stop string, inside the newest delta.
    """

    def __init__(self, stop: list[str] | None, include_stop_str_in_output: bool = False):
        self.stop = list(stop or [])
        self.include_stop_str_in_output = include_stop_str_in_output
        self.max_stop_len = max((len(s) for s in self.stop), default=0)
        self.holdback = self.max_stop_len - 1 if self.stop and not include_stop_str_in_output else 0
        self._chunks: list[str] = []
        self._len = 0
        self._sent = 0  # characters already handed out as streaming deltas

    def __len__(self) -> int:
        return self._len

    def append(self, delta: str, check_stop: bool = True) -> str | None:
        """Add new text; if it completes a stop string, cut the text there and return it."""
        if not delta:
            return None
        self._chunks.append(delta)
        self._len += len(delta)
        if not check_stop or not self.stop:
            return None
        found = self._find_stop(len(delta))
        if found is None:
            return None
        stop_str, position = found
        self._truncate(position + len(stop_str) if self.include_stop_str_in_output else position)
        return stop_str

    def text(self, finished: bool = True) -> str:
        """The whole text; while not finished, without the held-back tail."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        whole = self._chunks[0] if self._chunks else ""
        return whole if finished else whole[: self._visible_len(finished)]

    def take_delta(self, finished: bool) -> str:
        """Text not handed out yet (minus the hold-back unless finished); marks it as sent."""
        end = self._visible_len(finished)
        if end <= self._sent:
            return ""
        delta = self._tail(self._len - self._sent)[: end - self._sent]
        self._sent = end
        return delta

    def _visible_len(self, finished: bool) -> int:
        return self._len if finished else max(self._len - self.holdback, 0)

    def _find_stop(self, num_new_chars: int) -> tuple[str, int] | None:
        # Only matches that end inside the new text are new; earlier ones were already seen.
        window = self._tail(num_new_chars + self.max_stop_len - 1)
        base = self._len - len(window)
        best: tuple[str, int] | None = None
        for stop_str in self.stop:
            start = max(len(window) - num_new_chars - len(stop_str) + 1, 0)
            index = window.find(stop_str, start)
            # The earliest match wins; on a tie, the longer stop string.
            if index != -1 and (best is None or (index, -len(stop_str)) < (best[1], -len(best[0]))):
                best = (stop_str, index)
        return None if best is None else (best[0], base + best[1])

    def _tail(self, n: int) -> str:
        """The last n characters (walking back over chunks, not joining them all)."""
        parts: list[str] = []
        need = n
        for chunk in reversed(self._chunks):
            if need <= 0:
                break
            parts.append(chunk if len(chunk) <= need else chunk[len(chunk) - need :])
            need -= len(chunk)
        return "".join(reversed(parts))

    def _truncate(self, length: int) -> None:
        while self._chunks and self._len - len(self._chunks[-1]) >= length:
            self._len -= len(self._chunks.pop())
        if self._len > length:
            last = self._chunks[-1]
            self._chunks[-1] = last[: len(last) - (self._len - length)]
            self._len = length

"""Per-request grammar matchers and the batch's token bitmask (the worker's side)."""

from __future__ import annotations

import torch


class GrammarBrokenError(RuntimeError):
    """A sampled token the request's grammar does not allow: the mask left no allowed token to
    sample (allowed_token_ids or a logit bias excluded all of them)."""


class GrammarMatchers:
    """One xgrammar matcher per constrained request, kept until the request finishes (a
    preempted request keeps its output tokens, so its matcher's state stays right)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._matchers: dict[str, object] = {}
        # Requests whose grammar starts after a token sequence not yet generated: (sequence, tail).
        self._dormant: dict[str, tuple[list[int], list[int]]] = {}

    def add(self, request_id: str, compiled_grammar, starts_after: list[int] | None = None) -> None:
        """A matcher for `request_id` (once; a resumed request keeps its own); with
        `starts_after`, dormant until the output ends with those tokens."""
        if request_id not in self._matchers:
            import xgrammar as xgr

            self._matchers[request_id] = xgr.GrammarMatcher(compiled_grammar)
            if starts_after:
                self._dormant[request_id] = (list(starts_after), [])

    def drop(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)
        self._dormant.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._matchers

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def bitmask(self, request_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, bitmask [len(request_ids), W]) for the constrained requests among
        `request_ids` (one per sampled row; other rows allow everything), or None when none is
        constrained."""
        rows = [i for i, r in enumerate(request_ids) if r in self._matchers and r not in self._dormant]
        if not rows:
            return None
        words = (self.vocab_size + 31) // 32
        bitmask = torch.full((len(request_ids), words), -1, dtype=torch.int32)
        for row in rows:
            matcher = self._matchers[request_ids[row]]
            if not matcher.is_terminated():
                matcher.fill_next_token_bitmask(bitmask, row)
        return torch.tensor(rows, dtype=torch.long), bitmask

    def accept(self, request_id: str, token_id: int) -> bool:
        """Advance `request_id`'s matcher; True when its grammar has now terminated."""
        matcher = self._matchers.get(request_id)
        if matcher is None:
            return False
        dormant = self._dormant.get(request_id)
        if dormant is not None:
            sequence, tail = dormant
            tail.append(token_id)
            del tail[: -len(sequence)]
            if tail == sequence:  # the grammar applies from the next token on
                del self._dormant[request_id]
            return False
        if not matcher.accept_token(token_id):
            raise GrammarBrokenError(f"request {request_id!r}: sampled token {token_id} breaks its grammar")
        return matcher.is_terminated()

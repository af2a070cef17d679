"""Per-request grammar matchers and the batch's token bitmask (the worker's side)."""

from __future__ import annotations

import torch


class GrammarMatchers:
    """One xgrammar matcher per constrained request, kept until the request finishes (a
    preempted request keeps its output tokens, so its matcher's state stays right)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._matchers: dict[str, object] = {}

    def add(self, request_id: str, compiled_grammar) -> None:
        if request_id not in self._matchers:
            import xgrammar as xgr

            self._matchers[request_id] = xgr.GrammarMatcher(compiled_grammar)

    def drop(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._matchers

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def bitmask(self, request_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows, bitmask [len(request_ids), W]) for the constrained requests among
        `request_ids` (one per sampled row; other rows allow everything), or None when none is
        constrained."""
        rows = [i for i, r in enumerate(request_ids) if r in self._matchers]
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
        if not matcher.accept_token(token_id):
            raise RuntimeError(f"request {request_id!r}: sampled token {token_id} breaks its grammar")
        return matcher.is_terminated()

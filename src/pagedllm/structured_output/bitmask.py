"""Token bitmasks: xgrammar's packed format ([rows, ceil(V / 32)] int32, bit j of word w set
when token 32 * w + j may come next) applied to a batch's logits."""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True where the token is allowed."""
    bits = (bitmask.unsqueeze(-1) >> _SHIFTS.to(bitmask.device)) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_grammar_bitmask(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """A copy of `logits [R, V]` with the tokens `bitmask [len(rows), W]` forbids at -inf in
    `rows`; the other rows are copied untouched (the caller's tensor is not modified)."""
    out = logits.clone()
    allowed = unpack_bitmask(bitmask, logits.shape[1])
    out[rows] = out[rows].masked_fill(~allowed, float("-inf"))
    return out

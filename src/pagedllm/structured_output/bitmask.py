"""Token bitmasks: xgrammar's packed format ([rows, ceil(V / 32)] int32, bit j of word w set
when token 32 * w + j may come next) applied to a batch's logits.

`apply_grammar_bitmask` uses xgrammar's own kernel (it picks a CPU or GPU implementation by
the tensor's device and reads the packed words directly); `apply_grammar_bitmask_reference`
unpacks with plain torch ops and is what tests hold the kernel to.
"""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True where the token is allowed."""
    bits = (bitmask.unsqueeze(-1) >> _SHIFTS.to(bitmask.device)) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_grammar_bitmask(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """A copy of `logits [R, V]` with the tokens `bitmask [R, W]` forbids at -inf in `rows`;
    the other rows are copied untouched (the caller's tensor is not modified)."""
    import xgrammar as xgr

    out = logits.clone()
    xgr.apply_token_bitmask_inplace(out, bitmask, vocab_size=logits.shape[1], indices=rows.tolist())
    return out


def apply_grammar_bitmask_reference(
    logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor
) -> torch.Tensor:
    """The same as `apply_grammar_bitmask`, in plain torch."""
    out = logits.clone()
    allowed = unpack_bitmask(bitmask[rows], logits.shape[1])
    out[rows] = out[rows].masked_fill(~allowed, float("-inf"))
    return out

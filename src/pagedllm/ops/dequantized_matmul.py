"""x @ W^T for a quantized W, dequantized a slice of rows at a time.

Dequantizing the whole weight before one matmul writes it out in full and reads it back: for
the LM head (49152 x 576) that alone took 58 ms for 16 rows on one core. A slice of about a
million weights (2 MB in bf16) stays in cache between being written and being multiplied, and
each slice's product lands directly in its columns of the output: 10 ms for the same call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Weights dequantized per slice (2 MB in bf16: about an L2 cache here).
CHUNK_WEIGHTS = 1 << 20


def dequantized_matmul(
    x: torch.Tensor, out_features: int, rows_t: Callable[[int, int], torch.Tensor], row_multiple: int = 64
) -> torch.Tensor:
    """x [M, K] @ W^T [K, N], where `rows_t(a, b)` dequantizes rows a..b of W as [K, b - a].

    Slices start at multiples of `row_multiple` (a packing's block of rows)."""
    k = x.shape[1]
    rows = max(row_multiple, CHUNK_WEIGHTS // k // row_multiple * row_multiple)
    if rows >= out_features:
        return torch.mm(x, rows_t(0, out_features))
    out = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    for start in range(0, out_features, rows):
        end = min(out_features, start + rows)
        torch.mm(x, rows_t(start, end), out=out[:, start:end])
    return out

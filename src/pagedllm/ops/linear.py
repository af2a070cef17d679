"""x @ W^T (+ b) for float weights, choosing the kernel by the number of rows.

Decode steps of a few sequences multiply a handful of rows by every weight: that is bound by
memory bandwidth, and oneDNN's bf16 path reads the weights far below it for one row. Up to
`SKINNY_MAX_ROWS` rows of bf16 go through the AVX512-BF16 kernel; everything else (prefill,
large batches, float32, CUDA) through `F.linear`. Measured on SmolLM2's shapes (weights not
in cache, 2 threads): one row 33 vs 58 us (576->960), 783 vs 2456 us (LM head); 32 rows 491 vs
423 GFLOP/s (1536->576); 64 rows 465 vs 300 (576->576); at 128 rows oneDNN wins on some shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.ops import cpu_kernels

SKINNY_MAX_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for 2-D x, through the skinny kernel where it applies."""
    if x.dim() == 2 and x.shape[0] <= SKINNY_MAX_ROWS and cpu_kernels.gemv_supported(x, weight):
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
        torch.ops.pagedllm.gemv_bf16(out, x, weight)
        return out if bias is None else out.add_(bias)
    return F.linear(x, weight, bias)

"""x @ W^T (+ b) for float weights, choosing the kernel by the number of rows.

Decode steps of a few sequences multiply a handful of rows by every weight: that is bound by
memory bandwidth, and oneDNN's bf16 path reads the weights far below it for one row. Up to
`cpu_kernels.GEMV_MAX_ROWS` rows of bf16 go through the AVX512-BF16 GEMV kernel; everything
else (prefill, large batches, float32, CUDA) through `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.ops import cpu_kernels


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for 2-D x, through the skinny kernel where it applies."""
    if x.dim() == 2 and x.shape[0] <= cpu_kernels.GEMV_MAX_ROWS and cpu_kernels.gemv_supported(x, weight):
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
        torch.ops.pagedllm.gemv_bf16(out, x, weight)
        return out if bias is None else out.add_(bias)
    return F.linear(x, weight, bias)

"""x @ W^T (+ b) for plain bf16 weights through the skinny compiled kernel where it pays.

Decode steps of a few sequences multiply a handful of rows by every weight: that is bound by
memory bandwidth, and oneDNN's bf16 path reads the weights far below it for one row. Up to
`SKINNY_MAX_ROWS` rows of bf16 go through `gemv_bf16`; everything else (prefill, large batches,
float32) through `F.linear`. Measured on SmolLM2's shapes (weights not in cache, 2 threads):
one row 33 vs 58 us (576->960), 783 vs 2456 us (LM head); 32 rows 491 vs 423 GFLOP/s
(1536->576); 64 rows 465 vs 300 (576->576); at 128 rows oneDNN wins on some shapes.

`gemv_bf16` has an AVX512-BF16 path and an AVX2 + FMA path (bf16 widened to float32): both
builds take up to 256 rows (`gemv_bf16_max_rows()`), only the scalar build none. Without
AVX-512, torch's own bf16 matmul is far slower still (its fast bf16 paths need AVX-512), so the
kernel pays there at least as much. The CPU platform hands `skinny_linear` to the layers once,
when the loaded build has the kernel; the checks below are the kernel's shape preconditions,
not a device choice.
The compiled decoder stack makes the same choice per shape (it reads SKINNY_MAX_ROWS from the
library, `decoder_stack_info`, and the step compiler asserts they agree).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.ops.cpu_kernels import op

SKINNY_MAX_ROWS = 64


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through `gemv_bf16` for 2-D bf16 x of up to SKINNY_MAX_ROWS rows."""
    if (
        x.dim() == 2
        and x.shape[0] <= SKINNY_MAX_ROWS
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.shape[1] % 32 == 0
        and x.stride(1) == 1
        and weight.is_contiguous()
    ):
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
        gemv_bf16(out, x, weight)
        return out if bias is None else out.add_(bias)
    return F.linear(x, weight, bias)


def gemv_bf16(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """out [M, N] = x [M, K] @ weight [N, K]^T (bf16, K % 32 == 0, M <= 256), in the build in use."""
    op("gemv_bf16")(out, x, weight)

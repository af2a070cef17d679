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
The row limit is the platform's per-CPU choice (`skinny_linear_upto`): SKINNY_MAX_ROWS where the
kernel is the fastest matmul up to there, far fewer on CPUs with AMX, where oneDNN's bf16 matmul
runs on the tiles and overtakes it from a few rows on. The compiled decoder stack takes the same
limit as an argument, so both paths choose the same kernel per shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.ops.cpu_kernels import op

SKINNY_MAX_ROWS = 64
# On CPUs with AMX: oneDNN's bf16 matmul overtakes gemv_bf16 between 1 and 8 rows.
AMX_SKINNY_MAX_ROWS = 4


def skinny_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    max_rows: int = SKINNY_MAX_ROWS,
) -> torch.Tensor:
    """F.linear(x, weight, bias), through `gemv_bf16` for 2-D bf16 x of up to `max_rows` rows."""
    if (
        x.dim() == 2
        and x.shape[0] <= max_rows
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


def skinny_linear_upto(max_rows: int):
    """`skinny_linear` with the row limit `max_rows`, as a layer's dense matmul."""

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return skinny_linear(x, weight, bias, max_rows)

    linear.skinny_max_rows = max_rows
    return linear


def gemv_bf16(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """out [M, N] = x [M, K] @ weight [N, K]^T (bf16, K % 32 == 0, M <= 256), in the build in use."""
    op("gemv_bf16")(out, x, weight)

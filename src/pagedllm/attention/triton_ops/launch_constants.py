"""What both attention kernels are specialised on, computed once for their launchers."""

from __future__ import annotations

import torch
import triton

from pagedllm.ops.triton_launch import dot_precision


def dim_pad(head_dim: int) -> int:
    """The head dimension as the kernels hold it: a power of two, at least 16 (`tl.dot`'s least)."""
    return max(16, triton.next_power_of_2(head_dim))


def attention_constants(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    sliding_window: int | None,
    soft_cap: float | None,
    block_n: int,
) -> dict:
    """The constexprs every attention kernel takes: sizes, the key tile, and which masks apply."""
    head_dim = query.shape[2]
    return dict(
        HEAD_DIM=head_dim,
        DIM_PAD=dim_pad(head_dim),
        BLOCK_N=block_n,
        BLOCK_SIZE=kv_cache.shape[3],
        SLIDING=sliding_window is not None,
        USE_SOFT_CAP=soft_cap is not None,
        DOT_PRECISION=dot_precision(query.dtype),
    )

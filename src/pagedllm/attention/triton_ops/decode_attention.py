"""Paged attention for decodes (one new token per request), optionally split along the context.

A program attends one request's token for the query heads of one KV head (the rows of the
dot products are that GQA group, padded to 16). With NUM_SPLITS > 1 the visible context is cut
into NUM_SPLITS ranges, each attended by its own program into a partial result (the normalised
output and the log-sum-exp of its scores); `_combine_kernel` then merges the partials with
weights exp(lse_i - max lse), the split-KV ("flash-decoding") scheme. Splitting pays when few
long sequences decode: otherwise a step has too few programs to fill a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.attention.triton_ops.launch_constants import attention_constants, dim_pad
from pagedllm.attention.triton_ops.paged_kv import attend_key_range
from pagedllm.ops.triton_launch import TritonLaunch

_MIN_ROWS = 16  # tl.dot needs at least 16 rows


@triton.jit
def _decode_kernel(
    out_ptr,  # [T, heads, head_dim], or with splits the partials [R, heads, NUM_SPLITS, head_dim] float32
    lse_ptr,  # [R, heads, NUM_SPLITS] float32 (splits only)
    q_ptr,
    cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    scale,
    soft_cap,
    window,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_table,
    stride_kv,
    stride_head,
    stride_block,
    stride_token,
    GROUP: tl.constexpr,
    ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SLIDING: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    request = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    token = tl.load(query_start_loc_ptr + request)
    seq_len = tl.load(seq_lens_ptr + request)
    query_pos = seq_len - 1
    key_start = 0
    if SLIDING:
        key_start = tl.maximum(seq_len - window, 0)
    # This split's range, whole BLOCK_N tiles except at the end.
    per_split = tl.cdiv(tl.cdiv(seq_len - key_start, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_start = key_start + split * per_split
    split_end = tl.minimum(split_start + per_split, seq_len)

    rows = tl.arange(0, ROWS)
    row_valid = rows < GROUP
    head = kv_head * GROUP + rows
    dims = tl.arange(0, DIM_PAD)
    dim_valid = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )
    table_row = block_tables_ptr + request.to(tl.int64) * stride_table
    k_cache = cache_ptr + kv_head.to(tl.int64) * stride_head
    acc, row_max, row_sum = attend_key_range(
        q,
        tl.zeros([ROWS], tl.int32) + query_pos,
        split_start,
        split_end,
        table_row,
        k_cache,
        k_cache + stride_kv,
        dims,
        dim_valid,
        scale,
        soft_cap,
        window,
        stride_block,
        stride_token,
        ROWS,
        DIM_PAD,
        BLOCK_N,
        BLOCK_SIZE,
        SLIDING,
        USE_SOFT_CAP,
        DOT_PRECISION,
    )

    store_mask = row_valid[:, None] & dim_valid[None, :]
    if NUM_SPLITS == 1:
        acc = acc / tl.where(row_valid, row_sum, 1.0)[:, None]
        dst = out_ptr + token * stride_ot + head[:, None] * stride_oh + dims[None, :]
        tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # An empty split (a short context) leaves sum 0: its lse is -inf and it weighs nothing.
        empty = row_sum == 0.0
        acc = acc / tl.where(empty, 1.0, row_sum)[:, None]
        lse = tl.where(empty, float("-inf"), row_max + tl.log2(tl.where(empty, 1.0, row_sum)))
        part = (request * stride_ot + head * stride_oh + split).to(tl.int64)
        tl.store(out_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=store_mask)
        tl.store(lse_ptr + part, lse, mask=row_valid)


@triton.jit
def _combine_kernel(
    out_ptr,
    partial_ptr,  # [R, heads, NUM_SPLITS, head_dim] float32
    lse_ptr,  # [R, heads, NUM_SPLITS] float32, base 2
    query_start_loc_ptr,
    stride_ot,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    request = tl.program_id(0)
    head = tl.program_id(1)
    token = tl.load(query_start_loc_ptr + request)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, DIM_PAD)
    base = (request * NUM_HEADS + head).to(tl.int64) * NUM_SPLITS
    lse = tl.load(lse_ptr + base + splits, mask=splits < NUM_SPLITS, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))
    mask = (splits[:, None] < NUM_SPLITS) & (dims[None, :] < HEAD_DIM)
    partial = tl.load(partial_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :], mask=mask, other=0.0)
    result = tl.sum(partial * weight[:, None], 0) / tl.sum(weight, 0)
    dst = out_ptr + token * stride_ot + head * stride_oh + dims
    tl.store(dst, result.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


def decode_launches(
    out,
    query,
    kv_cache,
    block_table,
    query_start_loc,
    seq_lens,
    num_decodes,
    scale,
    sliding_window,
    soft_cap,
    num_splits,
    block_n,
    num_warps=4,
) -> list[TritonLaunch]:
    """Attend requests [0, num_decodes), one query token each, over their contexts: the decode
    kernel, then with splits the combine kernel (run each in order)."""
    if num_decodes == 0:
        return []
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = kv_cache.shape[1]
    group = num_heads // num_kv_heads
    if num_splits > 1:
        partial = torch.empty(
            (num_decodes, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device
        )
        lse = torch.empty((num_decodes, num_heads, num_splits), dtype=torch.float32, device=query.device)
        target, lse_arg, stride_t, stride_h = partial, lse, num_heads * num_splits, num_splits
    else:
        target, lse_arg, stride_t, stride_h = out, out, out.stride(0), out.stride(1)
    args = (
        target,
        lse_arg,
        query,
        kv_cache,
        block_table,
        query_start_loc,
        seq_lens,
        scale,
        soft_cap or 0.0,
        sliding_window or 0,
        query.stride(0),
        query.stride(1),
        stride_t,
        stride_h,
        block_table.stride(0),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
    )
    constants = dict(
        GROUP=group,
        ROWS=max(_MIN_ROWS, triton.next_power_of_2(group)),
        NUM_SPLITS=num_splits,
        **attention_constants(query, kv_cache, sliding_window, soft_cap, block_n),
    )
    launches = [
        TritonLaunch(_decode_kernel, (num_decodes, num_kv_heads, num_splits), args, constants, num_warps)
    ]
    if num_splits > 1:
        combine_args = (out, partial, lse, query_start_loc, out.stride(0), out.stride(1))
        combine_constants = dict(
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            DIM_PAD=dim_pad(head_dim),
            NUM_SPLITS=num_splits,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
        )
        launches.append(
            TritonLaunch(_combine_kernel, (num_decodes, num_heads), combine_args, combine_constants)
        )
    return launches

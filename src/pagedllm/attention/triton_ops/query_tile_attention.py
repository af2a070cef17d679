"""Paged attention for query tiles: prefill chunks (with or without cached context) and any
request with several new tokens.

Each program attends one tile of up to TILE_TOKENS consecutive query tokens of one request for
one KV head: the tile's rows are (token, query head of that KV head's group) pairs, so a GQA
group shares every K/V tile it loads. Keys are streamed from the first position any row of the
tile may see (its first query position - window + 1 under a sliding window, else 0) to its last
query position, in tiles of BLOCK_N positions read through the block table; the online softmax
(online_softmax.py) folds them in. Table entries before that first position are never read,
which is what lets a sliding group leave them stale.

The tiles of a step (which request, which first token) are planned on the host once per step
(work_plan.py) and shared by all layers.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pagedllm.attention.triton_ops.launch_constants import attention_constants
from pagedllm.attention.triton_ops.paged_kv import attend_key_range
from pagedllm.ops.triton_launch import TritonLaunch


@triton.jit
def _query_tile_kernel(
    out_ptr,
    q_ptr,
    cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    tile_request_ptr,
    tile_first_token_ptr,
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
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,
    TILE_TOKENS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    SLIDING: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    request = tl.load(tile_request_ptr + tile)
    first_token = tl.load(tile_first_token_ptr + tile)
    query_start = tl.load(query_start_loc_ptr + request)
    query_end = tl.load(query_start_loc_ptr + request + 1)
    seq_len = tl.load(seq_lens_ptr + request)
    context_before = seq_len - (query_end - query_start)

    rows = tl.arange(0, TILE_TOKENS * GROUP_PAD)
    token = first_token + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    head = kv_head * GROUP + head_in_group
    row_valid = (token < query_end) & (head_in_group < GROUP)
    query_pos = context_before + token - query_start
    dims = tl.arange(0, DIM_PAD)
    dim_valid = dims < HEAD_DIM
    q = tl.load(
        q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )

    first_pos = context_before + first_token - query_start
    key_end = tl.minimum(first_pos + TILE_TOKENS, seq_len)
    key_start = 0
    if SLIDING:
        key_start = tl.maximum(first_pos - window + 1, 0)

    table_row = block_tables_ptr + request.to(tl.int64) * stride_table
    k_cache = cache_ptr + kv_head.to(tl.int64) * stride_head
    acc, _, row_sum = attend_key_range(
        q,
        query_pos,
        key_start,
        key_end,
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
        TILE_TOKENS * GROUP_PAD,
        DIM_PAD,
        BLOCK_N,
        BLOCK_SIZE,
        SLIDING,
        USE_SOFT_CAP,
        DOT_PRECISION,
    )

    # Every valid row sees at least its own key, so its sum is positive; padding rows divide by 1.
    acc = acc / tl.where(row_valid, row_sum, 1.0)[:, None]
    tl.store(
        out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & dim_valid[None, :],
    )


def query_tile_launch(
    out,
    query,
    kv_cache,
    block_table,
    query_start_loc,
    seq_lens,
    tile_request,
    tile_first_token,
    tile_tokens,
    scale,
    sliding_window,
    soft_cap,
    block_n,
    num_warps=4,
) -> TritonLaunch:
    """Attend every planned tile (see the module docstring), writing `out` rows of those tiles:
    one program per (tile, KV head); `.run()` launches it."""
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[1]
    group = num_heads // num_kv_heads
    args = (
        out,
        query,
        kv_cache,
        block_table,
        query_start_loc,
        seq_lens,
        tile_request,
        tile_first_token,
        scale,
        soft_cap or 0.0,
        sliding_window or 0,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
    )
    constants = dict(
        GROUP=group,
        GROUP_PAD=triton.next_power_of_2(group),
        TILE_TOKENS=tile_tokens,
        **attention_constants(query, kv_cache, sliding_window, soft_cap, block_n),
    )
    grid = (tile_request.shape[0], num_kv_heads)
    return TritonLaunch(_query_tile_kernel, grid, args, constants, num_warps)

"""Device functions reading and writing the paged KV cache through block tables.

The cache of one layer is [2, kv_heads, num_blocks, block_size, head_dim] (the reference
backend's layout): token t of block b for head h is the row `h * stride_head + b * stride_block
+ t * stride_token`, head_dim contiguous elements. Key position p of a request lives in block
`block_table[p // block_size]` at row `p % block_size`; positions are gathered one row each,
so a tile of keys may start anywhere and the block size may be any the engine allows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pagedllm.attention.triton_ops.online_softmax import scores_of, update, visible


@triton.jit
def kv_row_offsets(table_row_ptr, key_pos, key_valid, stride_block, stride_token, BLOCK_SIZE: tl.constexpr):
    """Offsets (int64) of the cache rows holding `key_pos`; invalid positions read the null
    block's row 0 (and their table entries are never loaded)."""
    block = tl.load(table_row_ptr + key_pos // BLOCK_SIZE, mask=key_valid, other=0)
    return block.to(tl.int64) * stride_block + (key_pos % BLOCK_SIZE).to(tl.int64) * stride_token


@triton.jit
def load_kv_tile(cache_ptr, rows, key_valid, dims, dim_valid):
    """[keys, head_dim] tile of K or V (zeros where invalid) from one head's cache."""
    return tl.load(
        cache_ptr + rows[:, None] + dims[None, :], mask=key_valid[:, None] & dim_valid[None, :], other=0.0
    )


@triton.jit
def attend_key_range(
    q,
    query_pos,
    key_start,
    key_end,
    table_row,
    k_cache,
    v_cache,
    dims,
    dim_valid,
    scale,
    soft_cap,
    window,
    stride_block,
    stride_token,
    ROWS: tl.constexpr,
    DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    SLIDING: tl.constexpr,
    USE_SOFT_CAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Query rows `q` [ROWS, DIM_PAD] at `query_pos` over one request's keys [key_start,
    key_end), BLOCK_N at a time through its table row: the online softmax's (accumulator,
    row max, row sum), the accumulator not yet divided by the sum."""
    row_max = tl.full([ROWS], float("-inf"), tl.float32)
    row_sum = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, DIM_PAD], tl.float32)
    for start in range(key_start, key_end, BLOCK_N):
        key_pos = start + tl.arange(0, BLOCK_N)
        key_valid = key_pos < key_end
        kv_rows = kv_row_offsets(table_row, key_pos, key_valid, stride_block, stride_token, BLOCK_SIZE)
        k = load_kv_tile(k_cache, kv_rows, key_valid, dims, dim_valid)
        mask = visible(key_pos, query_pos, key_end, window, SLIDING)
        s = scores_of(q, k, scale, soft_cap, mask, USE_SOFT_CAP, DOT_PRECISION)
        v = load_kv_tile(v_cache, kv_rows, key_valid, dims, dim_valid)
        acc, row_max, row_sum = update(acc, row_max, row_sum, s, v, DOT_PRECISION)
    return acc, row_max, row_sum

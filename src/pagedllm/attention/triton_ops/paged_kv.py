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

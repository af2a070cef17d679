"""reshape_and_cache: write a step's K and V into the paged cache through the slot mapping."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.ops.triton_launch import TritonLaunch


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,
    value_ptr,
    cache_ptr,  # [2, kv_heads, blocks, block_size, head_dim]
    slot_mapping_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kv,  # K -> V in the cache
    stride_head,
    stride_block,
    stride_token,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    # A negative slot marks a padding token (a step padded to a captured size): nothing to write.
    if slot >= 0:
        heads = tl.arange(0, HEADS_PAD)
        dims = tl.arange(0, DIM_PAD)
        mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
        src_k = key_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :]
        src_v = value_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :]
        row = (slot // BLOCK_SIZE) * stride_block + (slot % BLOCK_SIZE) * stride_token
        dst = cache_ptr + row + heads[:, None].to(tl.int64) * stride_head + dims[None, :]
        dtype = cache_ptr.dtype.element_ty
        tl.store(dst, tl.load(src_k, mask=mask).to(dtype), mask=mask)
        tl.store(dst + stride_kv, tl.load(src_v, mask=mask).to(dtype), mask=mask)


def reshape_and_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store `key`/`value` [T, kv_heads, head_dim] (last dim contiguous) at `slot_mapping` [T]
    (block_id * block_size + offset; negative: skip) in `kv_cache`."""
    if slot_mapping.shape[0]:
        reshape_and_cache_launch(key, value, kv_cache, slot_mapping).run()


def reshape_and_cache_launch(key, value, kv_cache, slot_mapping) -> TritonLaunch:
    """The launch `reshape_and_cache` runs: one program per token, all KV heads at once."""
    _, num_kv_heads, _, block_size, head_dim = kv_cache.shape
    args = (
        key,
        value,
        kv_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        kv_cache.stride(1),
        kv_cache.stride(2),
        kv_cache.stride(3),
    )
    constants = dict(
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        DIM_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size,
    )
    return TritonLaunch(_reshape_and_cache_kernel, (slot_mapping.shape[0],), args, constants)

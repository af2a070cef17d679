"""Paged attention on CPU through the compiled kernel (csrc/ attention and cache-write sources).

One kernel call per layer attends every request, decode or prefill chunk, with or without a
prefix hit or a sliding window: each query reads its context in place through the block
table, so nothing is gathered, padded or masked densely.

The cache has the reference backend's shape, [2, kv_heads, blocks, block_size, head_dim]. For
bf16 caches with 16-token blocks and head_dim % 32 == 0, where the kernel build in use has
vector paths for it (AVX512-BF16, or AVX2 + FMA), each block's memory is ordered for bf16 dot
products instead (`BLOCKED_BF16`: K dim-pair major, V token-pair major); the layout says which,
once, when the cache is allocated. Other caches keep the row order the torch reference backend
uses.
"""

from __future__ import annotations

import torch

from pagedllm.attention.backends.base import BLOCKED_BF16, ROW, AttentionBackend, KVCacheLayout
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.ops.cpu_kernels import instruction_set, op

# The blocked order's block: 16 tokens, head_dim a multiple of 32 (csrc/ attention sources).
_BLOCKED_BLOCK_SIZE = 16
_BLOCKED_HEAD_DIM_MULTIPLE = 32
# Builds whose decode, prefill and cache-write kernels all read and write the blocked order.
_BLOCKED_INSTRUCTION_SETS = ("avx512_bf16", "avx2")


def blocked_order_applies(block_size: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether a cache of this shape and dtype takes the blocked bf16 element order."""
    return (
        dtype == torch.bfloat16
        and block_size == _BLOCKED_BLOCK_SIZE
        and head_dim % _BLOCKED_HEAD_DIM_MULTIPLE == 0
        and instruction_set() in _BLOCKED_INSTRUCTION_SETS
    )


class CPUPagedBackend(AttentionBackend):
    """Writes K/V with `reshape_and_cache` and attends with `paged_attention` (CPU only)."""

    name = "cpu_paged"

    def kv_cache_layout(self, num_blocks, block_size, num_kv_heads, head_dim, dtype) -> KVCacheLayout:
        order = BLOCKED_BF16 if blocked_order_applies(block_size, head_dim, dtype) else ROW
        return KVCacheLayout((2, num_kv_heads, num_blocks, block_size, head_dim), dtype, order)

    def plan(self, md: AttentionMetadata) -> None:
        # The kernel reads query_start_loc, seq_lens and the block tables directly.
        md.plan = None

    def forward(
        self,
        query,
        key,
        value,
        kv_cache,
        layout,
        md,
        scale,
        sliding_window=None,
        kv_group=0,
        logits_soft_cap=None,
    ):
        num_tokens = md.num_actual_tokens
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        blocked = layout.element_order == BLOCKED_BF16
        op("reshape_and_cache")(
            key[:num_tokens], value[:num_tokens], key_cache, value_cache, md.slot_mappings[kv_group], blocked
        )
        query = query[:num_tokens]
        output = torch.empty(query.shape, dtype=query.dtype)
        op("paged_attention")(
            output,
            query,
            key_cache,
            value_cache,
            md.block_tables[kv_group],
            md.query_start_loc,
            md.seq_lens,
            scale,
            sliding_window or 0,
            logits_soft_cap or 0.0,
            blocked,
        )
        return output

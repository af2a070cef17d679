"""Paged attention on CPU through the compiled kernel (pagedllm/csrc/cpu_ops.cpp).

One kernel call per layer attends every request, decode or prefill chunk, with or without a
prefix hit or a sliding window: each query reads its context in place through the block
table, so nothing is gathered, padded or masked densely.

The cache tensor has the torch reference backend's shape, [2, kv_heads, blocks, block_size,
head_dim]. For bf16 caches with 16-token blocks and head_dim % 32 == 0 on CPUs with
AVX512-BF16, each block's memory is laid out for bf16 dot products instead (K dim-pair major,
V token-pair major; see csrc/cpu_ops.cpp): only this backend reads and writes its caches.
Other caches keep the row layout.
"""

from __future__ import annotations

import torch

from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.ops import cpu_kernels


class CPUPagedBackend(TorchReferenceBackend):
    """Writes K/V with `reshape_and_cache` and attends with `paged_attention` (CPU only)."""

    name = "cpu"

    def plan(self, md: AttentionMetadata) -> None:
        # The kernel reads query_start_loc, seq_lens and the block tables directly.
        md.plan = None

    def forward(
        self, query, key, value, kv_cache, md, scale, sliding_window=None, kv_group=0, logits_soft_cap=None
    ):
        num_tokens = md.num_actual_tokens
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        ops = torch.ops.pagedllm
        vnni = cpu_kernels.vnni_layout(key_cache)
        ops.reshape_and_cache(
            key[:num_tokens], value[:num_tokens], key_cache, value_cache, md.slot_mappings[kv_group], vnni
        )
        query = query[:num_tokens]
        output = torch.empty(query.shape, dtype=query.dtype)
        ops.paged_attention(
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
            vnni,
        )
        return output

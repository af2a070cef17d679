"""Paged attention on CPU through the compiled kernel (pagedllm/csrc/cpu_ops.cpp).

One kernel call per layer attends every request, decode or prefill chunk, with or without a
prefix hit or a sliding window: each query reads its context in place through the block
table, so nothing is gathered, padded or masked densely. The KV cache layout is the torch
reference backend's, [2, kv_heads, blocks, block_size, head_dim], so either backend can run
on the same cache.
"""

from __future__ import annotations

import torch

from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.attention.metadata import AttentionMetadata


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
        ops.reshape_and_cache(
            key[:num_tokens], value[:num_tokens], key_cache, value_cache, md.slot_mappings[kv_group]
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
        )
        return output

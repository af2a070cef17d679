"""The attention module model files use; the runner binds its backend and KV cache."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.attention.backends.base import AttentionBackend, KVCacheLayout
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.direct_call import DirectCall


class Attention(DirectCall, nn.Module):
    """Paged causal attention over one layer's KV cache.

    Takes flat projections [T, heads * head_dim]. Before the first step the model runner binds
    (`bind_kv_cache`) the attention backend, the layer's cache (laid out as the backend's
    `kv_cache_layout` says) and `kv_group`, the KV-cache group whose block table and slot
    mapping the layer uses (layers are grouped by sliding window).
    `logits_soft_cap` c maps attention scores s to c * tanh(s / c) (None: no capping).
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_kv_heads: int,
        scale: float,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.scale = scale
        self.sliding_window = sliding_window
        self.logits_soft_cap = logits_soft_cap
        self.kv_cache: torch.Tensor | None = None
        self.kv_layout: KVCacheLayout | None = None
        self.kv_group = 0
        self.backend: AttentionBackend | None = None

    def bind_kv_cache(
        self, backend: AttentionBackend, kv_cache: torch.Tensor, layout: KVCacheLayout, kv_group: int
    ) -> None:
        """Attend with `backend` over `kv_cache` (allocated as `layout` says) of group `kv_group`."""
        if tuple(kv_cache.shape) != layout.shape or kv_cache.dtype != layout.dtype:
            raise ValueError(f"KV cache {tuple(kv_cache.shape)} {kv_cache.dtype} does not match {layout}")
        self.backend, self.kv_cache, self.kv_layout, self.kv_group = backend, kv_cache, layout, kv_group

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        if self.backend is None:
            raise RuntimeError("Attention layer has no KV cache bound; the model runner binds it at start-up")
        t = q.shape[0]
        out = self.backend.forward(
            q.view(t, self.num_heads, self.head_dim),
            k.view(t, self.num_kv_heads, self.head_dim),
            v.view(t, self.num_kv_heads, self.head_dim),
            self.kv_cache,
            self.kv_layout,
            md,
            self.scale,
            self.sliding_window,
            self.kv_group,
            self.logits_soft_cap,
        )
        return out.reshape(t, self.num_heads * self.head_dim)

"""The attention module model files use; the backend and cache are bound by the runner."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.direct_call import DirectCall


class Attention(DirectCall, nn.Module):
    """Paged causal attention over one layer's KV cache.

    Takes flat projections [T, heads * head_dim]; the model runner binds `kv_cache` (laid out
    as the backend says) and sets `kv_group`, the KV-cache group whose block table and slot
    mapping the layer uses (layers are grouped by sliding window), before the first step.
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
        self.kv_group = 0

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        if self.kv_cache is None:
            raise RuntimeError("Attention layer has no KV cache bound; the model runner binds it at start-up")
        t = q.shape[0]
        out = md.backend.forward(
            q.view(t, self.num_heads, self.head_dim),
            k.view(t, self.num_kv_heads, self.head_dim),
            v.view(t, self.num_kv_heads, self.head_dim),
            self.kv_cache,
            md,
            self.scale,
            self.sliding_window,
            self.kv_group,
            self.logits_soft_cap,
        )
        return out.reshape(t, self.num_heads * self.head_dim)

"""The interface an attention backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from pagedllm.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    """Writes a step's K/V into the paged cache and attends through block tables."""

    name: str = "abstract"

    @abstractmethod
    def kv_cache_shape(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int
    ) -> tuple[int, ...]:
        """Shape of one layer's cache holding `num_blocks` blocks (block 0 is the null block)."""

    @abstractmethod
    def plan(self, metadata: AttentionMetadata) -> None:
        """Build per-step index tensors shared by all layers (called once per step)."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # laid out as `kv_cache_shape` says
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        kv_group: int = 0,
        logits_soft_cap: float | None = None,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        """Causal attention of each request's new tokens over its context.

        The layer's K/V live in KV-cache group `kv_group` (its block table and slot mapping);
        with a `sliding_window` w a query at position p sees keys in (p - w, p]. A soft cap c
        maps scores s to c * tanh(s / c) before masking (Gemma 2 style).
        """

"""The interface an attention backend implements, and the KV-cache layout it declares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from pagedllm.attention.metadata import AttentionMetadata

# Element orders inside a block (`KVCacheLayout.element_order`).
ROW = "row"  # K and V as [block_size tokens][head_dim] rows, what the torch reference reads
# bf16 blocks of 16 tokens laid out for AVX512-BF16 dot products (attention/backends/cpu_paged.py)
BLOCKED_BF16 = "blocked_bf16"


@dataclass(frozen=True, slots=True)
class KVCacheLayout:
    """One layer's KV cache as a backend stores it.

    `shape` is the tensor's, block 0 included (the null block); `element_order` says how the
    values of one (kv head, block) are ordered in its `block_size * head_dim` elements. The
    runner allocates by `shape`; anything reading the cache itself (a step compiler) reads
    `element_order`.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    element_order: str = ROW


class AttentionBackend(ABC):
    """Writes a step's K/V into the paged cache and attends through block tables."""

    name: str = "abstract"

    @abstractmethod
    def kv_cache_layout(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> KVCacheLayout:
        """The layout of one layer's cache holding `num_blocks` blocks (block 0 is the null block)."""

    @abstractmethod
    def plan(self, metadata: AttentionMetadata) -> None:
        """Build per-step index tensors shared by all layers (called once per step)."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # allocated as `layout` says
        layout: KVCacheLayout,
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

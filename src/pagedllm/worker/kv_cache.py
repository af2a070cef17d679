"""Sizing and allocating the paged KV cache: one tensor per attention layer, one pool per group.

Attention layers are grouped by sliding window (`pagedllm.core.kv_cache_spec`). Each group
gets its own pool of blocks and each layer a tensor of its group's pool size, so a block id
means a slot in exactly the layers that use it. How the memory budget is split: a sliding
group can never hold more than `max_num_seqs` windows plus one step's tokens at once, so it
is given at most that many blocks; every other group gets the same number of blocks (a
sliding group never needs more than the full-attention group of the same requests), and what
the capped groups leave goes to the rest ("water filling").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, cdiv, group_layers
from pagedllm.model.layers.attention import Attention
from pagedllm.platforms.interface import Platform

logger = logging.getLogger(__name__)

_GiB = 1 << 30


def attention_layers(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def kv_cache_groups(model: nn.Module) -> tuple[list[int | None], list[int]]:
    """(window of each KV-cache group, group of each attention layer), full attention first."""
    return group_layers([layer.sliding_window for layer in attention_layers(model)])


def layer_bytes_per_block(layer: Attention, block_size: int, dtype: torch.dtype) -> int:
    return 2 * block_size * layer.num_kv_heads * layer.head_dim * dtype.itemsize


def bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """K and V of `block_size` tokens across every attention layer."""
    return sum(layer_bytes_per_block(layer, block_size, dtype) for layer in attention_layers(model))


def group_bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> list[int]:
    """One block's K and V summed over the layers of each group."""
    windows, layer_groups = kv_cache_groups(model)
    sizes = [0] * len(windows)
    for layer, group in zip(attention_layers(model), layer_groups):
        sizes[group] += layer_bytes_per_block(layer, block_size, dtype)
    return sizes


def useful_blocks(
    window: int | None, block_size: int, scheduler_config: SchedulerConfig, max_blocks_per_req: int
) -> int:
    """The most blocks a group can ever hold at once: every seat at full length, or for a
    sliding group every seat's window (plus two straddled blocks) and one step's chunks."""
    seats = scheduler_config.max_num_seqs
    every_seat_full = seats * max_blocks_per_req
    if window is None:
        return every_seat_full
    per_seat = cdiv(window - 1, block_size) + 2
    return min(every_seat_full, seats * per_seat + cdiv(scheduler_config.max_num_batched_tokens, block_size))


def split_budget(budget: int, block_bytes: list[int], caps: list[int]) -> list[int]:
    """Blocks per group: equal counts, except groups capped lower, whose savings go to the rest."""
    counts = [0] * len(block_bytes)
    remaining = list(range(len(block_bytes)))
    while remaining:
        equal = budget // sum(block_bytes[g] for g in remaining)
        capped = [g for g in remaining if caps[g] <= equal]
        if not capped:
            for g in remaining:
                counts[g] = equal
            break
        for g in capped:
            counts[g] = caps[g]
            budget -= caps[g] * block_bytes[g]
            remaining.remove(g)
    return counts


def determine_kv_cache_groups(
    model: nn.Module,
    cache_config: CacheConfig,
    scheduler_config: SchedulerConfig,
    max_blocks_per_req: int,
    dtype: torch.dtype,
    platform: Platform,
) -> list[KVCacheGroupSpec]:
    """One spec per group: exactly `num_kv_blocks` blocks each if set, else the platform's budget
    split as the module docstring says (capped where more blocks could never be used; a tiny
    model would otherwise get millions of blocks that only slow start-up)."""
    bs = cache_config.block_size
    windows, _ = kv_cache_groups(model)
    if cache_config.num_kv_blocks is not None:
        return [KVCacheGroupSpec(window, cache_config.num_kv_blocks) for window in windows]
    budget = platform.kv_cache_budget(cache_config)
    block_bytes = group_bytes_per_block(model, bs, dtype)
    caps = [useful_blocks(window, bs, scheduler_config, max_blocks_per_req) for window in windows]
    counts = split_budget(budget, block_bytes, caps)
    if min(counts) < 1:
        raise ValueError(
            f"KV cache budget of {budget / _GiB:.3f} GiB holds no block of {sum(block_bytes)} bytes; "
            "raise kv_cache_memory or set num_kv_blocks"
        )
    return [KVCacheGroupSpec(window, count) for window, count in zip(windows, counts)]


def allocate_kv_caches(
    model: nn.Module,
    backend: AttentionBackend,
    groups: list[KVCacheGroupSpec],
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """Allocate each layer's cache of its group's num_blocks + 1 blocks, laid out as `backend`
    says, and bind the backend, the cache and the group to the layer.

    Block 0 is the null block the block pool never hands out. Zeroed, not empty: masked
    context slots are multiplied by 0 and must not hold NaN.
    """
    windows, layer_groups = kv_cache_groups(model)
    if [g.sliding_window for g in groups] != windows:
        raise ValueError(f"KV-cache groups {groups} do not match the model's windows {windows}")
    caches = []
    for layer, group in zip(attention_layers(model), layer_groups):
        num_blocks = groups[group].num_blocks + 1
        layout = backend.kv_cache_layout(num_blocks, block_size, layer.num_kv_heads, layer.head_dim, dtype)
        cache = torch.zeros(layout.shape, dtype=layout.dtype, device=device)
        layer.bind_kv_cache(backend, cache, layout, group)
        caches.append(cache)
    return caches

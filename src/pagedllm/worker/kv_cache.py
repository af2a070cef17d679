"""Sizing and allocating the paged KV cache, one tensor per attention layer."""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.config import CacheConfig
from pagedllm.model.layers.attention import Attention

logger = logging.getLogger(__name__)

_GiB = 1 << 30
# CPU default when no budget is given: like vLLM-CPU's 4 GiB, never more than half of what is free.
_CPU_DEFAULT_BYTES = 4 * _GiB


def attention_layers(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def bytes_per_block(model: nn.Module, block_size: int, dtype: torch.dtype) -> int:
    """K and V of `block_size` tokens across every attention layer."""
    elem = torch.empty((), dtype=dtype).element_size()
    return sum(
        2 * block_size * layer.num_kv_heads * layer.head_dim * elem for layer in attention_layers(model)
    )


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * _GiB


def determine_num_blocks(
    cache_config: CacheConfig, block_bytes: int, device: torch.device, max_useful_blocks: int | None = None
) -> int:
    """Exactly `num_kv_blocks` if set, else the memory budget divided by one block's bytes.

    A budget-derived count is capped at `max_useful_blocks` (every sequence at full length):
    a tiny model would otherwise get millions of blocks that only slow start-up.
    """
    if cache_config.num_kv_blocks is not None:
        return cache_config.num_kv_blocks
    if cache_config.kv_cache_memory is not None:
        budget = int(cache_config.kv_cache_memory * _GiB)
    elif device.type == "cuda":
        budget = int(available_memory(device) * cache_config.kv_cache_memory_fraction)
    else:
        budget = min(_CPU_DEFAULT_BYTES, available_memory(device) // 2)
    num_blocks = budget // block_bytes
    if max_useful_blocks is not None:
        num_blocks = min(num_blocks, max_useful_blocks)
    if num_blocks < 1:
        raise ValueError(
            f"KV cache budget of {budget / _GiB:.3f} GiB holds no block of {block_bytes} bytes; "
            "raise kv_cache_memory or set num_kv_blocks"
        )
    return num_blocks


def allocate_kv_caches(
    model: nn.Module,
    backend: AttentionBackend,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """Allocate num_blocks + 1 blocks per layer in the backend's layout and bind them.

    Block 0 is the null block the block pool never hands out. Zeroed, not empty: masked
    context slots are multiplied by 0 and must not hold NaN.
    """
    caches = []
    for layer in attention_layers(model):
        shape = backend.kv_cache_shape(num_blocks + 1, block_size, layer.num_kv_heads, layer.head_dim)
        cache = torch.zeros(shape, dtype=dtype, device=device)
        layer.kv_cache = cache
        caches.append(cache)
    return caches

"""How the KV-cache memory budget is split over the groups of a model with sliding windows."""

from __future__ import annotations

import torch

import tiny_models
from pagedllm.config import CacheConfig, EngineConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, request_capacity_blocks
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.platforms import resolve_platform
from pagedllm.worker import kv_cache


def test_split_budget_fills_equal_counts_below_the_caps():
    # Equal counts while no cap binds.
    assert kv_cache.split_budget(1000, [10, 40], [100, 100]) == [20, 20]
    # The sliding group (40 bytes a block) is capped at 5: the full group gets what it leaves.
    assert kv_cache.split_budget(1000, [10, 40], [1000, 5]) == [80, 5]
    # Both capped: neither takes more than it can use.
    assert kv_cache.split_budget(10**6, [10, 40], [30, 5]) == [30, 5]
    assert kv_cache.split_budget(1000, [1000], [8]) == [1]


def test_useful_blocks_of_a_sliding_group():
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=1024)
    # Four windows of 16 tokens in blocks of 8 (3 blocks each, +1 when straddling) plus a step's 64 tokens.
    assert kv_cache.useful_blocks(16, 8, config, 128) == 4 * 4 + 8
    assert kv_cache.useful_blocks(None, 8, config, 128) == 4 * 128
    assert kv_cache.useful_blocks(4096, 8, config, 128) == 4 * 128


def test_gemma3_groups_from_a_memory_budget(tmp_path):
    tiny_models.save_tiny(tiny_models.gemma3_config(), tmp_path, seed=1)
    model = load_model(
        ModelConfig.from_resolved(resolve_model(str(tmp_path))), torch.device("cpu"), torch.float32
    )
    scheduler = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=16, max_model_len=512)
    # One block of 4 tokens: K and V of 1 head x 24 floats per layer; 1 full and 3 sliding layers.
    assert kv_cache.group_bytes_per_block(model, 4, torch.float32) == [768, 3 * 768]
    cache = CacheConfig(block_size=4, kv_cache_memory=1 / 1024)  # 1 MiB
    platform = resolve_platform(EngineConfig(device="cpu"))
    groups = kv_cache.determine_kv_cache_groups(model, cache, scheduler, 128, torch.float32, platform)
    # Sliding: 2 seats x (2 window blocks + 2) + 4 blocks of one step = 12. Full attention could
    # take the rest of the MiB (1329 blocks) but 2 seats x 128 blocks is all it can ever use.
    assert groups == [KVCacheGroupSpec(None, 256), KVCacheGroupSpec(8, 12)]
    assert request_capacity_blocks(groups, 4, 16, 512) == 256
    exact = kv_cache.determine_kv_cache_groups(
        model, CacheConfig(block_size=4, num_kv_blocks=9), scheduler, 128, torch.float32, platform
    )
    assert exact == [KVCacheGroupSpec(None, 9), KVCacheGroupSpec(8, 9)]
    caches = kv_cache.allocate_kv_caches(model, _backend(), groups, 4, torch.float32, torch.device("cpu"))
    layers = kv_cache.attention_layers(model)
    assert [layer.kv_group for layer in layers] == [1, 1, 0, 1]
    assert [cache.shape[2] for cache in caches] == [13, 13, 257, 13]


def _backend():
    from pagedllm.attention.backends.torch_ref import TorchReferenceBackend

    return TorchReferenceBackend()

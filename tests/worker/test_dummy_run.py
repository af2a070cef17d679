"""Start-up dummy steps: the lengths of a profiling step, and profiling/warm-up on a real runner.

On CPU the platform tracks no device memory, so the measured figures are zero here (the GPU
tests check them); what runs for real is the step itself: scratch caches bound per KV-cache
group, a full prefill step and a decode batch through the model, the caches unbound after.
"""

from __future__ import annotations

import torch

import tiny_models
from pagedllm.config import CacheConfig, EngineConfig, SchedulerConfig
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.platforms import resolve_platform
from pagedllm.worker import dummy_run
from pagedllm.worker.kv_cache import attention_layers
from pagedllm.worker.model_runner import ModelRunner


def test_prefill_lengths_fill_the_step_with_as_few_requests_as_the_context_allows():
    assert dummy_run.prefill_lengths(2048, 4096, 128) == [2048]
    assert dummy_run.prefill_lengths(2048, 512, 128) == [512] * 4
    assert dummy_run.prefill_lengths(1000, 300, 128) == [300, 300, 300, 100]
    assert dummy_run.prefill_lengths(8192, 32, 4) == [32] * 4  # at most max_num_seqs requests
    assert dummy_run.blocks_needed([5, 16, 17], 16) == 1 + 1 + 2


def test_profile_and_warm_up_run_on_a_model_with_two_kv_groups(tmp_path):
    folder = tiny_models.save_tiny(tiny_models.gemma3_config(), tmp_path / "gemma3", seed=5)
    model_config = ModelConfig.from_resolved(resolve_model(str(folder)))
    sched = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=48)
    cache = CacheConfig(block_size=4, num_kv_blocks=40)
    runner = ModelRunner(
        model_config, sched, cache, resolve_platform(EngineConfig(device="cpu")), torch.float32
    )
    profile = dummy_run.profile_memory(runner, capture_graphs=True)
    assert (profile.weights, profile.activation_peak, profile.graph_reserve) == (0, 0, 0)
    assert all(layer.kv_cache is None for layer in attention_layers(runner.model))
    runner.initialize_kv_cache(runner.determine_kv_cache_groups())
    caches = [layer.kv_cache for layer in attention_layers(runner.model)]
    assert len({c.shape[2] for c in caches}) == 1 and caches[0].shape[2] == 41
    dummy_run.warm_up(runner)
    # Warm-up wrote only into blocks the dummy requests held (1..12 for a 48-token prompt).
    assert all(bool((c[:, :, 13:] == 0).all()) for c in caches)

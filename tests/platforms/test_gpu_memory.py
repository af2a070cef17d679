"""The CUDA platform's KV-cache sizing arithmetic, from given memory figures (no GPU needed)."""

from __future__ import annotations

import pytest

from pagedllm.config import ConfigError
from pagedllm.platforms.gpu_memory import GpuMemoryProfile, describe, kv_cache_budget

GiB = 1 << 30


def profile(**overrides) -> GpuMemoryProfile:
    # An 8B model in bf16 on an 80 GiB GPU.
    values = dict(
        total=80 * GiB, weights=15 * GiB, activation_peak=2 * GiB, graph_reserve=GiB // 2, non_torch=GiB
    )
    values.update(overrides)
    return GpuMemoryProfile(**values)


def test_budget_is_the_allowed_share_less_everything_else():
    assert kv_cache_budget(profile(), 0.9) == int(80 * GiB * 0.9) - 15 * GiB - 2 * GiB - GiB // 2 - GiB
    assert kv_cache_budget(profile(graph_reserve=0), 0.5) == 40 * GiB - 18 * GiB
    # More utilization: the whole difference goes to the cache.
    assert kv_cache_budget(profile(), 0.95) - kv_cache_budget(profile(), 0.9) == int(80 * GiB * 0.95) - int(
        80 * GiB * 0.9
    )


def test_weights_that_do_not_fit_are_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"weights \(70.00 GiB\) do not fit in --gpu-memory-utilization 0.8"
    ):
        kv_cache_budget(profile(weights=70 * GiB), 0.8)


def test_no_room_left_for_the_cache_says_what_to_change():
    with pytest.raises(ConfigError, match="no memory left for the KV cache.*--max-num-batched-tokens"):
        kv_cache_budget(profile(weights=60 * GiB, activation_peak=12 * GiB), 0.9)


def test_log_line_names_every_share():
    budget = kv_cache_budget(profile(), 0.9)
    line = describe(profile(), 0.9, budget)
    assert line.startswith("GPU memory: 80.00 GiB x 0.9 = 72.00 GiB: weights 15.00 GiB")
    assert line.endswith(f"KV cache {budget / GiB:.2f} GiB")

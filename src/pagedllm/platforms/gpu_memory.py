"""How much of a GPU the KV cache gets: device memory times `--gpu-memory-utilization`, less
the weights, the activation peak of the largest step and what captured graphs keep.

The runner measures a `GpuMemoryProfile` once at start-up (after loading the weights, by running
a dummy step of `max_num_batched_tokens` tokens) and the platform sizes the cache from it; the
arithmetic is plain integers so it is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagedllm.config import ConfigError

_GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuMemoryProfile:
    """Bytes measured on the device at start-up."""

    total: int  # the device's memory
    weights: int  # allocated by torch once the model is loaded
    activation_peak: int  # the largest step's peak on top of the weights
    graph_reserve: int  # kept for the captured decode graphs' memory pool (0 when eager)
    non_torch: int  # used outside torch's allocator: CUDA context, library workspaces


def kv_cache_budget(profile: GpuMemoryProfile, utilization: float) -> int:
    """Bytes for the KV cache; raises `ConfigError` saying what to change when nothing is left."""
    allowed = int(profile.total * utilization)
    if profile.weights + profile.non_torch > allowed:
        raise ConfigError(
            f"the model's weights ({_gib(profile.weights)}) do not fit in "
            f"--gpu-memory-utilization {utilization} of this GPU's {_gib(profile.total)} "
            f"({_gib(profile.non_torch)} already used outside torch): raise "
            "--gpu-memory-utilization, quantize (--quantization int8/int4) or use a larger GPU"
        )
    budget = allowed - profile.weights - profile.activation_peak - profile.graph_reserve - profile.non_torch
    if budget <= 0:
        raise ConfigError(
            f"no memory left for the KV cache: {_gib(allowed)} allowed, weights "
            f"{_gib(profile.weights)}, activations {_gib(profile.activation_peak)}, graphs "
            f"{_gib(profile.graph_reserve)}, other {_gib(profile.non_torch)}: raise "
            "--gpu-memory-utilization, lower --max-num-batched-tokens or --max-num-seqs, or pass "
            "--enforce-eager"
        )
    return budget


def describe(profile: GpuMemoryProfile, utilization: float, budget: int) -> str:
    """The start-up log line saying where the device's memory goes."""
    return (
        f"GPU memory: {_gib(profile.total)} x {utilization} = {_gib(int(profile.total * utilization))}: "
        f"weights {_gib(profile.weights)}, activations {_gib(profile.activation_peak)}, graphs "
        f"{_gib(profile.graph_reserve)}, other {_gib(profile.non_torch)}, KV cache {_gib(budget)}"
    )


def _gib(nbytes: int) -> str:
    return f"{nbytes / _GiB:.2f} GiB"

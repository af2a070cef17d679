"""Platforms: the device decision, made once (see interface.py)."""

from __future__ import annotations

import torch

from pagedllm.config import EngineConfig
from pagedllm.platforms.cpu import CpuPlatform
from pagedllm.platforms.cpu_threads import configure_frontend_threads, pin_frontend_threads, unpinned_cores
from pagedllm.platforms.cuda import CudaPlatform
from pagedllm.platforms.interface import Platform, PlatformOptions


def select_device(requested: str | None) -> torch.device:
    """CUDA when present, else CPU; an explicit request wins (and is checked)."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available; use --device cpu")
    return device


def resolve_platform(config: EngineConfig) -> Platform:
    """The platform of `config.device` (default: CUDA when present, else CPU) with the config's
    switches (environment variables override them, read here once)."""
    device = select_device(config.device)
    options = PlatformOptions.resolve(config)
    index, count = options.local_replica
    if device.type == "cuda" and device.index is None and count > 1:
        # Local data-parallel replicas take consecutive runs of tensor_parallel_size GPUs.
        device = torch.device("cuda", index * config.tensor_parallel_size)
    if device.type == "cuda":
        return CudaPlatform(device, options)
    return CpuPlatform(device, options)


__all__ = [
    "CpuPlatform",
    "CudaPlatform",
    "Platform",
    "PlatformOptions",
    "configure_frontend_threads",
    "pin_frontend_threads",
    "unpinned_cores",
    "resolve_platform",
    "select_device",
]

"""The CUDA platform: the Triton attention kernels and the native torch layers."""

from __future__ import annotations

import importlib.util

import torch

from pagedllm.config import CacheConfig
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.platforms.interface import Platform


class CudaPlatform(Platform):
    """bf16 (float16 before Ampere), the Triton attention backend (the torch reference when
    triton is not installed), native layers, and a KV cache of a share of the GPU's free memory."""

    name = "cuda"

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def available_memory(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def default_kv_cache_budget(self, cache_config: CacheConfig) -> int:
        return int(self.available_memory() * cache_config.kv_cache_memory_fraction)

    def default_attention_backend(self) -> str:
        return "triton" if importlib.util.find_spec("triton") is not None else "torch"

    def layer_ops(self, dtype: torch.dtype) -> LayerOps:
        return NATIVE

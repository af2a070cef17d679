"""The CUDA platform: today the pure-torch path (the GPU issues give it kernels and graphs)."""

from __future__ import annotations

import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.config import CacheConfig
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.platforms.interface import Platform


class CudaPlatform(Platform):
    """bf16 (float16 before Ampere), the torch reference attention backend, native layers, and
    a KV cache of a share of the GPU's free memory."""

    name = "cuda"

    def __init__(self, device, options):
        super().__init__(device, options)
        self._backend = TorchReferenceBackend()

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def available_memory(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def default_kv_cache_budget(self, cache_config: CacheConfig) -> int:
        return int(self.available_memory() * cache_config.kv_cache_memory_fraction)

    def attention_backend(self) -> AttentionBackend:
        return self._backend

    def layer_ops(self, dtype: torch.dtype) -> LayerOps:
        return NATIVE

"""Chooses the attention backend for a device."""

from __future__ import annotations

import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.ops import cpu_kernels


def get_attention_backend(device: torch.device) -> AttentionBackend:
    """The compiled paged kernel on CPU where it builds; the torch reference elsewhere."""
    if device.type == "cpu" and cpu_kernels.available():
        return CPUPagedBackend()
    return TorchReferenceBackend()

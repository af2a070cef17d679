"""Chooses the attention backend for a device."""

from __future__ import annotations

import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend


def get_attention_backend(device: torch.device) -> AttentionBackend:
    """The best available backend for `device` (the torch reference everywhere today)."""
    return TorchReferenceBackend()

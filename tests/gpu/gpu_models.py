"""The tiny random models the GPU tests run: the CPU engine tests' shapes, so that a failure
here and a pass there points at the device, not at the model."""

from __future__ import annotations

import torch

import tiny_models

# kind -> (config builder, seed)
TINY = {
    "llama": (tiny_models.llama_config, 0),
    "mistral": (tiny_models.mistral_config, 1),  # sliding window 24, shorter than the long prompts
    "qwen2": (tiny_models.qwen2_config, 2),  # q/k/v biases, tied embeddings
    "gemma3": (tiny_models.gemma3_config, 5),  # sliding and global layers, one KV head of size 24
}


def random_prompts(lengths: list[int], seed: int = 11) -> list[list[int]]:
    """Token-id prompts over the tiny vocabulary, clear of the special ids 0-2."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in lengths]


def block_size_for(kind: str) -> int:
    """Gemma's window (8) spans two blocks of 4, so blocks leave its window within the prompts."""
    return 4 if kind == "gemma3" else 8

"""Where a model's checkpoint tensors come from, and the plain copy used for unsharded parameters."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks
from pagedllm.model.loader.resolve import ResolvedModel


def iterate_weights(
    resolved: ResolvedModel, int4_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | Int4Blocks]]:
    """(Hugging Face name, CPU tensor) pairs of the model's checkpoint, safetensors or GGUF.

    With `int4_blocks`, GGUF 4-bit matrices come as `Int4Blocks` (see gguf.py)."""
    if resolved.format == "gguf":
        from pagedllm.model.loader.gguf import iterate_gguf_weights

        return iterate_gguf_weights(resolved.path, int4_blocks)
    from pagedllm.model.loader.safetensors import iterate_safetensors

    return iterate_safetensors(resolved.path)


def default_weight_loader(param: torch.nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
    """Copy a whole checkpoint tensor into a parameter of the same shape (dtype/device converted)."""
    if isinstance(loaded_weight, Int4Blocks):
        loaded_weight = loaded_weight.dequantize()
    if param.shape != loaded_weight.shape:
        raise ValueError(
            f"checkpoint tensor shape {tuple(loaded_weight.shape)} != parameter {tuple(param.shape)}"
        )
    param.data.copy_(loaded_weight)

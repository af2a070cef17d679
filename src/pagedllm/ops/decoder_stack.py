"""Glue to the compiled decoder stack (csrc/decoder_stack.cpp): one op call for all layers.

The library states its own constants (`decoder_stack_info`), so the step compiler checks them
against Python's at load instead of keeping them in step by comments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.ops.cpu_kernels import has_op, op

# WeightSpec kinds in the order decoder_stack_info() exports their codes.
_KIND_NAMES = ("plain", "packed_bf16", "int4_gemv", "int8_gemv", "onednn_bf16")


@dataclass(frozen=True, slots=True)
class DecoderStackInfo:
    """What the compiled op takes: tensors per layer, the most rows its skinny matmul takes for
    plain bf16 weights (0: not compiled in), and its weight-kind codes."""

    tensors_per_layer: int
    skinny_max_rows: int
    kinds: dict[str, int]


def decoder_stack_info() -> DecoderStackInfo | None:
    """The library's constants, or None if this build has no decoder stack."""
    if not has_op("decoder_stack_info"):
        return None
    tensors, skinny, *codes = op("decoder_stack_info")()
    kinds = dict(zip(_KIND_NAMES, codes, strict=True))
    return DecoderStackInfo(tensors, skinny, kinds)


def decoder_stack(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    weights: list[torch.Tensor],
    weight_kinds: list[int],
    kv_caches: list[torch.Tensor],
    layer_groups: list[int],
    windows: list[int],
    block_tables: list[torch.Tensor],
    slot_mappings: list[torch.Tensor],
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    eps: float,
    scale: float,
    blocked_kv: bool,
    skinny_max_rows: int,
) -> torch.Tensor:
    """Embedding output [T, hidden] -> final-normed hidden states [T, hidden] (see the C++ op)."""
    return op("decoder_stack")(
        hidden,
        positions,
        cos_sin_cache,
        weights,
        weight_kinds,
        kv_caches,
        layer_groups,
        windows,
        block_tables,
        slot_mappings,
        query_start_loc,
        seq_lens,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size,
        eps,
        scale,
        blocked_kv,
        skinny_max_rows,
    )

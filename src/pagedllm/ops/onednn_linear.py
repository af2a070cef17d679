"""bf16 weights prepacked once for oneDNN's matmul: the CPU platform's weight format on CPUs with
AMX.

torch's plain `F.linear` on a bf16 weight hands oneDNN the weight in its [N, K] layout, and
oneDNN reorders it into its own blocked layout for the AMX tiles on every call. Reordering it
once after loading (`torch.ops.mkldnn._reorder_linear_weight`, the op torch's own compiler
uses for frozen weights) and calling `torch.ops.mkldnn._linear_pointwise` with it skips that:
on an AMX Xeon it was faster than `F.linear` at every row count measured, from 1 row (cold
weights) to prefill (figures in docs/architecture.md). The packed tensor is oneDNN's opaque
layout and replaces the float weight (same size); `dequantize()` reorders it back.

The compiled decoder stack calls the same op on the same tensor (csrc/decoder_stack.cpp), so
both paths give the same bits.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.weight_spec import WeightSpec


def onednn_available() -> bool:
    """Whether this torch has oneDNN's prepacked linear ops and bf16 support on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    try:
        return (
            hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
            and bool(ops._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):
        return False


def pack_for_onednn(weight: torch.Tensor) -> OneDnnBF16Weight | None:
    """The oneDNN-packed form of a bf16 CPU weight [N, K], or None for any other weight."""
    if weight.dim() != 2 or weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
        return None
    return OneDnnBF16Weight(weight.data)


class OneDnnBF16Weight(nn.Module):
    """A bf16 [N, K] weight in oneDNN's packed layout: `linear(x)` = x @ W^T, `dequantize()` = W."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Not persistent: an opaque oneDNN tensor has no storage to save; the model is rebuilt
        # from its checkpoint.
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        self.register_buffer("packed", packed, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, bf16 packed for oneDNN"

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def weight_spec(self) -> WeightSpec:
        """What a step compiler passes to oneDNN's packed matmul (any number of rows)."""
        return WeightSpec(kind="onednn_bf16", tensor=self.packed)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] -> x @ W^T + bias [..., N]."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.dtype != torch.bfloat16:
            return torch.nn.functional.linear(x, self.dequantize(x.dtype), bias)
        if not x.is_contiguous():
            x = x.contiguous()
        if bias is not None and bias.dtype != torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], None) + bias
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], None)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        weight = self.packed.to_dense()
        return weight if dtype is None else weight.to(dtype)

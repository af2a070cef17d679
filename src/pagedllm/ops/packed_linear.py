"""bf16 weights prepacked for the compiled bf16 matmul (csrc/gemm_bf16.cpp).

A linear layer's bf16 weight is repacked once after loading so that one 64-byte load holds 16
output columns x 2 input features: with AVX512-BF16 the kernel then accumulates broadcast
activation pairs times 16 columns with no horizontal sums, and a 64-column panel of the weight
stays in L2 while every row tile passes over it. The AVX2 build reads the same layout (32-byte
loads of 8 columns x 2 features, widened to float32 for FMA; 16-column slices of a panel per
row tile). One row streams the weight at memory bandwidth; the measured rates against oneDNN,
per build, are in docs/architecture.md. On CPUs with AMX-BF16 the native build packs 16-column
panels instead and multiplies them on the AMX tiles (16 k pairs of a panel are one contiguous
tile operand, read in place), which is what makes packing pay there too. The panel width is
the loaded build's (csrc/gemm_bf16_impl.h): a packed tensor is read by the build that packed it.
The packed tensor replaces the float weight (same size); `dequantize()` gives W back.

The CPU platform packs every packable weight after loading unless weight packing is off
(`--no-packed-weights`, `PAGEDLLM_PACKED_WEIGHTS=0`: plain weights, oneDNN and the skinny kernel).
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.cpu_kernels import op
from pagedllm.ops.weight_spec import WeightSpec


def packable(weight: torch.Tensor) -> bool:
    """Whether the kernel takes `weight [N, K]`: bf16 on the CPU, N a multiple of 16, K of 32
    (the platform has checked that the loaded build has a vector path: AVX512-BF16 or AVX2)."""
    return (
        weight.dim() == 2
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and weight.shape[0] % 16 == 0
        and weight.shape[1] % 32 == 0
    )


def pack_if_packable(weight: torch.Tensor) -> PackedBF16Weight | None:
    """The packed form of `weight`, or None where the kernel cannot take it."""
    return PackedBF16Weight(weight.data) if packable(weight) else None


class PackedBF16Weight(nn.Module):
    """A bf16 [N, K] weight in the packed layout: `linear(x)` = x @ W^T, `dequantize()` = W."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        if not packable(weight):
            raise ValueError(f"cannot pack a {tuple(weight.shape)} {weight.dtype} weight for the bf16 kernel")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", op("pack_weight_bf16")(weight.contiguous()), persistent=True)

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, bf16 packed"

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def weight_spec(self) -> WeightSpec:
        """What a step compiler passes to the packed matmul (any number of rows)."""
        return WeightSpec(kind="packed_bf16", tensor=self.packed)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] -> x @ W^T + bias [..., N]."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.dtype != torch.bfloat16:
            return torch.nn.functional.linear(x, self.dequantize().to(x.dtype), bias)
        if x.stride(1) != 1:
            x = x.contiguous()
        out = torch.empty((x.shape[0], self.out_features), dtype=x.dtype, device=x.device)
        op("gemm_packed_bf16")(out, x, self.packed)
        return out if bias is None else out.add_(bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W (an embedding lookup in a table tied to a packed LM head)."""
        flat_ids = ids.reshape(-1).to(torch.int64).contiguous()
        out = torch.empty((flat_ids.shape[0], self.in_features), dtype=torch.bfloat16, device=ids.device)
        op("embed_packed_bf16")(out, self.packed, flat_ids)
        return out.view(*ids.shape, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K] (the kernel build's own unpacking: the panel width is its choice)."""
        weight = op("unpack_weight_bf16")(self.packed)
        return weight if dtype is None else weight.to(dtype)

"""8-bit weights with one scale per output row (symmetric): w[n, k] = q[n, k] * scale[n], q in -127..127.

Storage: `qweight` int8 [N, K] (one byte per weight) and `scale` [N] in the activation dtype.
On CPU a few rows run torch's fused kernel (`aten._weight_int8pack_mm`, which reads the int8
bytes directly); more rows dequantize the weight to the activation dtype for one ordinary
matmul (`OP_MAX_ROWS`, measured). The fused kernel needs K to be a multiple of 16 (other sizes
read past the rows), so other shapes, and other devices, always dequantize. Embedding lookups
dequantize only the gathered rows. A platform may hand the layers a format of its own instead,
made from the same codes (`LayerOps.int8_weight`; CUDA's: ops/triton_quant_linear.py).
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.dequantized_matmul import dequantized_matmul

# Up to this many rows torch's fused int8 op beats dequantize + matmul: the crossover was 25-45
# rows on every shape of SmolLM2 (benchmarks/quant_quality.py --kernels).
OP_MAX_ROWS = 32
_OP_K_MULTIPLE = 16
_INT8_MM = torch.ops.aten._weight_int8pack_mm.default


class Int8Weight(nn.Module):
    """A [N, K] weight in int8 with per-row scales: `linear(x)` = x @ W^T, `embed(ids)` = W[ids]."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, fused: bool | None = None):
        """`fused`: use torch's fused int8 op for few rows (default: for CPU tensors when K allows it)."""
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight, persistent=True)
        self.register_buffer("scale", scale, persistent=True)
        if fused is None:
            fused = qweight.device.type == "cpu"
        self.fused = fused and self.in_features % _OP_K_MULTIPLE == 0
        self.fused_rows = OP_MAX_ROWS if self.fused else 0

    @classmethod
    def from_float(cls, weight: torch.Tensor, dtype: torch.dtype | None = None) -> Int8Weight:
        """Round-to-nearest per row, with the scale rounded to `dtype` first so the codes fit it."""
        dtype = dtype or weight.dtype
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127).to(dtype)
        safe = torch.where(scale.float() > 0, scale.float(), torch.ones_like(w[:, 0]))
        qweight = torch.round(w / safe.unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
        return cls(qweight, scale)

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, per-row scales, {'fused' if self.fused else 'dequantize'}"

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (in the scale's dtype for the fused kernel) -> x @ W^T + bias [..., N]."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.shape[0] <= self.fused_rows:
            out = _INT8_MM(x.contiguous(), self.qweight, self.scale)
        else:
            out = dequantized_matmul(x, self.out_features, lambda a, b: self._rows(a, b, x.dtype).t())
        return out if bias is None else out + bias

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized (embedding lookups)."""
        rows = self.qweight.index_select(0, ids.reshape(-1))
        scale = self.scale.index_select(0, ids.reshape(-1))
        return (rows.to(scale.dtype) * scale.unsqueeze(1)).reshape(*ids.shape, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        return self._rows(0, self.out_features, dtype or self.scale.dtype)

    def _rows(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight[start:end].to(dtype) * self.scale[start:end].to(dtype).unsqueeze(1)

"""Weight-only int8 and int4 weights in the layouts of our Triton kernels (ops/triton_quant_kernels.py).

int8, per output feature n (symmetric): w[n, k] = qweight[n, k] * scale[n]

    qweight  int8 [N, K]     row n holds feature n's codes, K contiguous (as Int8Weight)
    scale    [N]             in the activation dtype

int4, groups of 32 along K (asymmetric): w[n, k] = (code[n, k] - 8) * scale[k // 32, n] + zero[k // 32, n]

    codes    uint8 [N, K / 2]   row n: for each group g, 16 bytes; byte 16 g + j holds
                                code(32 g + j) in its low nibble and code(32 g + 16 + j) in its high
    scale    [K / 32, N]        in the activation dtype, N contiguous
    zero     [K / 32, N]

        k:     32g ... 32g+15 | 32g+16 ... 32g+31
        byte:  16g ... 16g+15 (low nibbles) | the same bytes (high nibbles)

Why this layout: a kernel program reads its features' rows along K in runs of whole groups (at
least 16 bytes per row; 64 per iteration when decoding), coalesced; a group's scales are one
contiguous vector over the program's features; and splitting the group into halves instead of
interleaving codes 2j, 2j + 1 makes each nibble plane multiply 16 *contiguous* values of x, so
no shuffle of the dequantized tile or strided load of x is needed. Rows stay whole and in order,
so an embedding lookup or a row slice reads contiguous bytes. The codes are the `Int4Blocks`
codes rearranged (GGUF Q4_0 / Q4_1 groups included, bit for bit); scale and zero are rounded to
the activation dtype, as the portable `Int4Weight` stores them.

`linear` runs the kernels for any M (the tile choice adapts: triton_quant_tiles.py); `embed`
and `dequantize` unpack with torch. On CPU tensors the kernels run only under Triton's
interpreter (TRITON_INTERPRET=1), which is how they are tested here.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.triton_launch import check_runs_on

_WHAT = "the Triton quantized matmuls"

GROUP_SIZE = 32
_HALF = GROUP_SIZE // 2


def _kernels():
    # Imported when a weight is built, not with this module: decorating the kernels is where
    # Triton reads TRITON_INTERPRET, which the caller may set after importing pagedllm.
    from pagedllm.ops import triton_quant_kernels

    return triton_quant_kernels


class TritonInt8Weight(nn.Module):
    """A [N, K] int8 weight with per-row scales: `linear(x)` = x @ W^T, `embed(ids)` = W[ids]."""

    layout = "triton"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor):
        """`qweight` int8 [N, K] in -127..127, `scale` [N] (its dtype is the dequantized weight's)."""
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2 or scale.shape != qweight.shape[:1]:
            raise ValueError(
                f"expected int8 codes [N, K] and scales [N]; got {qweight.dtype} {tuple(qweight.shape)} "
                f"and {tuple(scale.shape)}"
            )
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight.contiguous(), persistent=True)
        self.register_buffer("scale", scale.contiguous(), persistent=True)
        self._linear = _kernels().int8_linear

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, per-row scales, triton"

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scale.nbytes

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (bf16, fp16 or float32) -> x @ W^T + bias [..., N] in x's dtype."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if not x.is_cuda:
            check_runs_on(x.device, _kernels()._int8_matmul_kernel, _WHAT)
        return self._linear(x, self.qweight, self.scale, bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized (embedding lookups)."""
        flat = ids.reshape(-1)
        rows = self.qweight.index_select(0, flat).to(self.scale.dtype)
        return (rows * self.scale.index_select(0, flat).unsqueeze(1)).reshape(*ids.shape, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        dtype = dtype or self.scale.dtype
        return self.qweight.to(dtype) * self.scale.to(dtype).unsqueeze(1)


class TritonInt4Weight(nn.Module):
    """A [N, K] weight in 4-bit groups of 32: `linear(x)` = x @ W^T, `embed(ids)` = W[ids]."""

    layout = "triton"

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype):
        """codes uint8 [N, K] in 0..15; scale and zero [N, K / 32] (an `Int4Blocks`' tensors,
        any device); `dtype`: the activation dtype, in which scale and zero are stored."""
        super().__init__()
        rows, cols = codes.shape
        if codes.dtype != torch.uint8 or cols % GROUP_SIZE or scale.shape != (rows, cols // GROUP_SIZE):
            raise ValueError(
                f"cannot store a {rows}x{cols} weight in 4-bit groups of {GROUP_SIZE} along K "
                f"(needs uint8 codes, K a multiple of {GROUP_SIZE}, scale and zero [N, K / {GROUP_SIZE}])"
            )
        self.out_features, self.in_features = rows, cols
        self.group_size = GROUP_SIZE
        self.activation_dtype = dtype
        self.register_buffer("codes", pack_int4(codes), persistent=True)
        self.register_buffer("scale", scale.t().to(dtype).contiguous(), persistent=True)
        self.register_buffer("zero", zero.t().to(dtype).contiguous(), persistent=True)
        self._linear = _kernels().int4_linear

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, group {self.group_size}, triton"

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scale.nbytes + self.zero.nbytes

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (bf16, fp16 or float32) -> x @ W^T + bias [..., N] in x's dtype."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if not x.is_cuda:
            check_runs_on(x.device, _kernels()._int4_matmul_kernel, _WHAT)
        return self._linear(x, self.codes, self.scale, self.zero, bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized (embedding lookups)."""
        flat = ids.reshape(-1)
        return self._dequantize_rows(flat, self.activation_dtype).reshape(*ids.shape, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K], computed as the kernels do (float32, rounded once to `dtype`)."""
        rows = torch.arange(self.out_features, device=self.codes.device)
        return self._dequantize_rows(rows, dtype or self.activation_dtype)

    def codes_t(self) -> torch.Tensor:
        """The codes transposed, uint8 [K, N]."""
        return unpack_int4(self.codes).t().contiguous()

    def _dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        groups = self.in_features // GROUP_SIZE
        codes = unpack_int4(self.codes.index_select(0, rows)).view(-1, groups, GROUP_SIZE).float()
        scale = self.scale.index_select(1, rows).t().float().unsqueeze(-1)
        offset = self.zero.index_select(1, rows).t().float().unsqueeze(-1) - 8 * scale
        return (codes * scale + offset).reshape(-1, self.in_features).to(dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] in the kernels' layout (see the module docstring) from codes uint8 [N, K]."""
    rows, cols = codes.shape
    halves = codes.reshape(rows, cols // GROUP_SIZE, 2, _HALF)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(rows, cols // 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Codes uint8 [N, K] from `pack_int4`'s layout [N, K / 2]."""
    rows, half_cols = packed.shape
    groups = packed.reshape(rows, half_cols // _HALF, 1, _HALF)
    return torch.cat([groups & 15, groups >> 4], dim=2).reshape(rows, half_cols * 2)

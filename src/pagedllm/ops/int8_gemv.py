"""8-bit weights in the layout of the compiled int8 kernel (csrc/int8_gemv.{h,cpp}).

    w[n, k] = code[n, k] * scale[n]        code in -127..127 (Int8Weight's rounding)

One uint8 tensor (`packed`) holds output rows in blocks of 16: per super-block of 64 rows its
float32 scales, then for each group of 32 values of k the signed codes in lines of 8 values of
k, each line as four pairs of values of k with a row's two codes side by side (one bf16 dot
product's operand once converted), the lines one tile reads together side by side, so
`gemv_int8` reads each thread's rows as one stream, once for up to 64 rows of x. Up to `GEMV_MAX_ROWS` rows
of bf16 x run the kernel; more rows dequantize 64-row slices (`dequantize_int8_t`) for an
ordinary matmul. The CPU platform makes every int8
weight a `GemvInt8Weight` when the kernels are built with vector paths (AVX512-BF16 or AVX2)
and activations are bf16; elsewhere the portable `Int8Weight` (model/layers/quantization/int8.py) serves.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.cpu_kernels import op
from pagedllm.ops.dequantized_matmul import dequantized_matmul
from pagedllm.ops.int4_gemv import GEMV_BLOCK_ROWS, GEMV_SUPER_BLOCKS, GROUP_SIZE
from pagedllm.ops.weight_spec import WeightSpec

# Up to this many rows gemv_int8 runs; more rows dequantize slices of the weight for a bf16
# matmul: the crossover measured on SmolLM2's shapes with the earlier nibble layout, on a CPU
# without AMX (benchmarks/int8_kernels.py --rows 32 64 128; figures in benchmarks/README.md).
# The pair layout is faster from 4 rows on, so the crossover there may now lie higher: not
# re-measured on such a CPU.
GEMV_MAX_ROWS = 32
# On CPUs with AMX, where dequantize + oneDNN's bf16 matmul runs on the tiles and overtakes
# gemv_int8's vector kernel at about 16-20 rows (benchmarks/README.md, "The int8 pair layout"):
# the limit for builds without the tile kernel (the AVX2 build there).
AMX_GEMV_MAX_ROWS = 16
# With the native build on such a CPU, gemv_int8 itself runs on the tiles from 9 rows
# (csrc/int8_gemv_amx.cpp, csrc/amx_strips.h) and stays ahead of dequantize + oneDNN up to here
# (benchmarks/README.md, "AMX tiles").
AMX_TILE_MAX_ROWS = 512
_SCALE_BYTES = GEMV_BLOCK_ROWS * 4
_LINE_BYTES = GEMV_BLOCK_ROWS * 8  # 8 values of k of a block's 16 rows


class GemvInt8Weight(nn.Module):
    """A [N, K] int8 weight with per-row scales in gemv_int8's layout: `linear(x)` = x @ W^T."""

    layout = "gemv"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, max_rows: int = GEMV_MAX_ROWS):
        """qweight int8 [N, K] (codes in -127..127), scale [N] (any float dtype; kept as float32);
        up to `max_rows` rows of x run the kernel (the platform's per-CPU choice)."""
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        if self.in_features % GROUP_SIZE or scale.shape != (self.out_features,):
            raise ValueError(f"cannot store a {tuple(qweight.shape)} weight in gemv_int8's layout")
        self.activation_dtype = torch.bfloat16
        self.register_buffer("packed", pack_gemv_int8(qweight, scale), persistent=True)
        self.fused_rows = max_rows

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, per-row scales, gemv layout"

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def weight_spec(self) -> WeightSpec:
        """What a step compiler passes to the compiled int8 kernel, and up to how many rows."""
        return WeightSpec(kind="int8_gemv", tensor=self.packed, max_rows=self.fused_rows)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] -> x @ W^T + bias [..., N]; bf16 x of up to GEMV_MAX_ROWS rows run the kernel."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.shape[0] <= self.fused_rows and x.dtype == torch.bfloat16:
            out = op("int8_linear")(x, self._buffers["packed"], self.out_features)
        else:
            out = dequantized_matmul(x, self.out_features, lambda a, b: self._rows_t(a, b, x.dtype))
        return out if bias is None else out + bias

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight, dequantized (a tied embedding): gathered from the layout's
        bytes, O(ids * K)."""
        flat = ids.reshape(-1).to(torch.int64)
        k, groups = self.in_features, self.in_features // GROUP_SIZE
        blocks = -(-self.out_features // GEMV_BLOCK_ROWS)
        blk, row = flat // GEMV_BLOCK_ROWS, flat % GEMV_BLOCK_ROWS
        first = blk // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
        nb = (blocks - first).clamp(max=GEMV_SUPER_BLOCKS)
        super_start = first * (_SCALE_BYTES + groups * 4 * _LINE_BYTES)
        scale_at = super_start + (blk - first) * _SCALE_BYTES + row * 4
        scale = self.packed[scale_at.unsqueeze(1) + torch.arange(4)].view(torch.float32)  # [ids, 1]
        # Value k of a row: group g, line o, pair p, the pair's first or second (csrc/int8_gemv.h).
        kk = torch.arange(k)
        g, o, p, h = kk // GROUP_SIZE, kk % GROUP_SIZE // 8, kk % 8 // 2, kk % 2
        codes_start = super_start + nb * _SCALE_BYTES + (blk - first) * _LINE_BYTES + row * 2
        nb = nb.unsqueeze(1)
        at = codes_start.unsqueeze(1) + (g * 4 * _LINE_BYTES * nb + o * _LINE_BYTES * nb + p * 32 + h)
        values = self.packed[at].view(torch.int8).to(torch.float32) * scale
        return values.to(self.activation_dtype).reshape(*ids.shape, k)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        return self._rows_t(0, self.out_features, dtype or self.activation_dtype).t()

    def _rows_t(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start..end of the weight, transposed: [K, end - start] (start a multiple of 16)."""
        out = torch.empty(
            self.in_features, end - start, dtype=dtype if dtype == torch.bfloat16 else torch.float32
        )
        op("dequantize_int8_t")(out, self.packed, start)
        return out.to(dtype)


def pack_gemv_int8(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """gemv_int8's `packed` (uint8, ceil(N / 16) * 16 * (K + 4) bytes, see csrc/int8_gemv.h) from
    codes int8 [N, K] and per-row scales [N]."""
    n, k = qweight.shape
    blocks, groups = -(-n // GEMV_BLOCK_ROWS), k // GROUP_SIZE
    pad = blocks * GEMV_BLOCK_ROWS - n
    codes = qweight.view(torch.uint8)
    scale = scale.float()
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad, k)])  # code 0
        scale = torch.cat([scale, scale.new_zeros(pad)])
    # k = 32 g + 8 line + 2 pair + h; per block, group and line: pair by pair, row by row, h.
    c = codes.view(blocks, GEMV_BLOCK_ROWS, groups, 4, 4, 2).permute(0, 2, 3, 4, 1, 5)
    lines = c.reshape(blocks, groups, 4, _LINE_BYTES)
    scales = scale.view(blocks, _SCALE_BYTES // 4).view(torch.uint8)  # [blocks, 64]
    full = blocks // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
    parts = []
    for start, end in ((0, full), (full, blocks)):
        if end > start:  # all full super-blocks at once, then the last (1..3 blocks), if any
            nb = min(end - start, GEMV_SUPER_BLOCKS)
            head = scales[start:end].reshape(-1, nb * _SCALE_BYTES)
            # [super-blocks, groups, line, block, 128]: a tile's lines side by side.
            body = lines[start:end].reshape(-1, nb, groups, 4, _LINE_BYTES).permute(0, 2, 3, 1, 4)
            parts.append(torch.cat([head, body.reshape(head.shape[0], -1)], dim=1).reshape(-1))
    return torch.cat(parts) if len(parts) > 1 else parts[0]

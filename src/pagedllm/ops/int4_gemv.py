"""4-bit weights in the layout of the compiled 4-bit kernel (csrc/quant_gemv.{h,cpp}).

    w[n, k] = (code[n, k] - 8) * scale[n, k // G] + zero[n, k // G]        code in 0..15, G in GROUP_SIZES

One uint8 tensor (`packed`) holds output rows in blocks of 16, k-major, the codes and
(scale, zero) pairs of 64 rows interleaved group by group, so that `gemv_int4` reads each
thread's rows as one stream, once for up to 64 rows of x. Up to `GEMV_MAX_ROWS` rows of bf16 x
(decode, small prefills) run the kernel; more rows dequantize 64-row slices of the weight
(`dequantize_int4_t`) for an ordinary matmul. The CPU platform makes every 4-bit weight a
`GemvInt4Weight` when the kernels are built with vector paths (AVX512-BF16 or AVX2) and
activations are bf16; elsewhere the portable `Int4Weight` (model/layers/quantization/int4.py) serves.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.ops.cpu_kernels import op
from pagedllm.ops.dequantized_matmul import dequantized_matmul
from pagedllm.ops.weight_spec import WeightSpec

GROUP_SIZE = 32  # the default group, and the one checkpoints' 4-bit blocks (GGUF Q4_0 / Q4_1) use
GROUP_SIZES = (32, 64, 128)  # what the kernels take
# Up to this many rows gemv_int4 runs; more rows dequantize slices of the weight for a bf16
# matmul. The crossover (benchmarks/quant_kernels.py --sweep, one thread, cold weights) was at
# 100-200 rows on SmolLM2's shapes: at 64 rows the kernel took 115 / 620 / 268 us (576x576 /
# 3072x576 / 576x1536) against 154 / 823 / 374 dequantizing; at 128 rows 251 / 1311 / 555
# against 241 / 1284 / 621; at 256 rows dequantizing won by 1-14%.
GEMV_MAX_ROWS = 128
# On CPUs with AMX, where dequantize + oneDNN's bf16 matmul runs on the tiles and overtakes
# gemv_int4's vector kernel between 20 and 32 rows (two measurements disagree;
# benchmarks/README.md, "The int8 pair layout"); 16 follows the first and may be low: the
# limit for builds without the tile kernel (the AVX2 build there).
AMX_GEMV_MAX_ROWS = 16
# With the native build on such a CPU, gemv_int4 itself runs on the tiles from 6 rows
# (csrc/quant_gemv_amx.cpp) and stays ahead of dequantize + oneDNN up to here
# (benchmarks/README.md, "AMX tiles").
AMX_TILE_MAX_ROWS = 512
# The layout (csrc/quant_gemv.h): blocks of 16 output rows, 4 blocks to a super-block; per
# block and group of G values of k, G / 8 lines of 64 bytes of codes and 64 bytes of (scale, zero).
GEMV_BLOCK_ROWS = 16
GEMV_SUPER_BLOCKS = 4
_LINE_BYTES, _QUAD_BYTES, _SCALE_BYTES = 64, 256, 64


class GemvInt4Weight(nn.Module):
    """A [N, K] 4-bit weight in gemv_int4's layout: `linear(x)` = x @ W^T, `dequantize()` = W.

    `packed` is the weight argument of `pagedllm::gemv_int4` (codes and scales in one tensor);
    the decoder-stack step compiler reads it through `weight_spec()`.
    """

    layout = "gemv"

    def __init__(
        self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, max_rows: int = GEMV_MAX_ROWS
    ):
        """codes uint8 [N, K], scale and zero [N, K / G] (stored rounded to bf16) for a group size
        G in GROUP_SIZES; up to `max_rows` rows of x run the kernel (the platform's per-CPU choice)."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.group_size = group_size_of(codes, scale)
        if self.group_size not in GROUP_SIZES or zero.shape != scale.shape:
            raise ValueError(
                f"cannot store a {tuple(codes.shape)} weight with {tuple(scale.shape)} scales in gemv_int4's "
                f"4-bit layout: groups of {', '.join(map(str, GROUP_SIZES))} along K"
            )
        self.activation_dtype = torch.bfloat16
        self.register_buffer("packed", pack_gemv(codes, scale, zero), persistent=True)
        self.fused_rows = max_rows

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, group {self.group_size}, gemv layout"

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def weight_spec(self) -> WeightSpec:
        """What a step compiler passes to the compiled 4-bit kernel, and up to how many rows."""
        return WeightSpec(kind="int4_gemv", tensor=self.packed, max_rows=self.fused_rows)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] -> x @ W^T + bias [..., N]; bf16 x of up to GEMV_MAX_ROWS rows run the kernel."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.shape[0] <= self.fused_rows and x.dtype == torch.bfloat16:
            # (The buffer read from _buffers: a module attribute lookup cost 0.5 us per call.)
            out = op("int4_linear")(x, self._buffers["packed"], self.out_features)
        else:
            rows_t = lambda a, b: self._rows_t(a, b, x.dtype)  # noqa: E731
            out = dequantized_matmul(x, self.out_features, rows_t)
        return out if bias is None else out + bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        return self.dequantize_t(dtype).t()

    def dequantize_t(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The transposed weight [K, N], contiguous."""
        return self._rows_t(0, self.out_features, dtype or self.activation_dtype)

    def codes_t(self) -> torch.Tensor:
        """The codes transposed, uint8 [K, N]."""
        return unpack_gemv(self.packed, self.out_features, self.in_features, self.group_size)[0].contiguous()

    def _rows_t(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start..end of the weight, transposed: [K, end - start]."""
        k, g = self.in_features, self.group_size
        if dtype in (torch.bfloat16, torch.float32) and start % GEMV_BLOCK_ROWS == 0:
            out = torch.empty(k, end - start, dtype=dtype)
            op("dequantize_int4_t")(out, self.packed, start, g)
            return out
        codes_t, scale_zero = unpack_gemv(self.packed, self.out_features, self.in_features, self.group_size)
        codes = codes_t[:, start:end].contiguous().view(k // g, g, end - start)
        scale_zero = scale_zero[:, start:end].to(dtype)
        scale = scale_zero[..., 0].contiguous()  # a strided scale would slow the multiply 10x
        offset = scale_zero[..., 1] - 8 * scale  # w = code * scale + offset
        return torch.addcmul(offset.unsqueeze(1), codes, scale.unsqueeze(1)).view(k, end - start)


def group_size_of(codes: torch.Tensor, scale: torch.Tensor) -> int:
    """The group size G of codes [N, K] with scales [N, K / G] (0 if no whole G fits)."""
    (n, k), groups = codes.shape, scale.shape[-1]
    return k // groups if scale.shape == (n, groups) and groups and k % groups == 0 else 0


def pack_gemv(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """gemv_int4's `packed` (uint8, ceil(N / 16) * (8 K + 64 K / G) bytes, see csrc/quant_gemv.h)
    from codes uint8 [N, K] and scale / zero [N, K / G] (stored in bf16)."""
    n, k = codes.shape
    g = group_size_of(codes, scale)
    blocks, groups = -(-n // GEMV_BLOCK_ROWS), k // g
    pad = blocks * GEMV_BLOCK_ROWS - n
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad, k)])
        scale = torch.cat([scale, scale.new_zeros(pad, groups)])
        zero = torch.cat([zero, zero.new_zeros(pad, groups)])
    lines = nibble_lines(codes, g)
    pairs = torch.stack([scale, zero], dim=-1).to(torch.bfloat16).view(torch.uint8)  # [N, groups, 4]
    pairs = (
        pairs.view(blocks, GEMV_BLOCK_ROWS, groups, 4).transpose(1, 2).reshape(blocks, groups, _SCALE_BYTES)
    )
    full = blocks // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
    parts = []
    for start, end in ((0, full), (full, blocks)):
        if end > start:  # all full super-blocks at once, then the last (1..3 blocks), if any
            nb = min(end - start, GEMV_SUPER_BLOCKS)
            # Codes quad by quad (4 lines), each quad of the nb blocks in turn; then the scales.
            quads = lines[start:end].view(-1, nb, groups, g // 32, _QUAD_BYTES).permute(0, 2, 3, 1, 4)
            scales = pairs[start:end].view(-1, nb, groups, _SCALE_BYTES).transpose(1, 2)
            chunk = [quads.reshape(-1, groups, nb * 8 * g), scales.reshape(-1, groups, nb * _SCALE_BYTES)]
            parts.append(torch.cat(chunk, dim=2).reshape(-1))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def nibble_lines(codes: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """4-bit codes uint8 [N, K] (N a multiple of 16, K of the group size G) as the kernels'
    lines: uint8 [N / 16, K / G, 8 G], per block and group G / 8 lines of 64 bytes (see
    csrc/quant_gemv.h)."""
    n, k = codes.shape
    blocks, groups, lines = n // GEMV_BLOCK_ROWS, k // group_size, group_size // 8
    # k = G g + 8 line + 4 j2 + 2 jl + h -> byte 2 h + j2 of the row's uint32, nibble jl.
    c = codes.view(blocks, GEMV_BLOCK_ROWS, groups, lines, 2, 2, 2).permute(0, 2, 3, 1, 6, 4, 5)
    return (c[..., 0] | (c[..., 1] << 4)).reshape(blocks, groups, lines * _LINE_BYTES)


def unpack_gemv(
    packed: torch.Tensor, n: int, k: int, group_size: int = GROUP_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes_t uint8 [K, N], scale_zero bf16 [K / G, N, 2]) from `pack_gemv`'s layout."""
    blocks, groups, quads = -(-n // GEMV_BLOCK_ROWS), k // group_size, group_size // 32
    code_bytes = quads * _QUAD_BYTES  # a block's codes per group
    full = blocks // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
    block_bytes = groups * (code_bytes + _SCALE_BYTES)
    lines, pairs = [], []
    for start, end in ((0, full), (full, blocks)):
        if end > start:
            nb = min(end - start, GEMV_SUPER_BLOCKS)
            chunk = packed[start * block_bytes : end * block_bytes].view(
                -1, groups, nb * (code_bytes + _SCALE_BYTES)
            )
            codes = chunk[..., : nb * code_bytes].reshape(-1, groups, quads, nb, _QUAD_BYTES)
            lines.append(
                codes.permute(0, 3, 1, 2, 4).reshape(-1, groups, code_bytes)
            )  # [blocks, groups, ...]
            scales = chunk[..., nb * code_bytes :].reshape(-1, groups, nb, _SCALE_BYTES)
            pairs.append(scales.transpose(1, 2).reshape(-1, groups, _SCALE_BYTES))
    lines_t = torch.cat(lines).transpose(0, 1)  # [groups, blocks, code bytes]
    pairs_t = torch.cat(pairs).transpose(0, 1)
    p = lines_t.reshape(groups, blocks, quads * 4, GEMV_BLOCK_ROWS, 2, 2)  # g, block, line, row, h, j2
    codes = torch.stack([p & 15, p >> 4], dim=-1)  # ..., jl
    codes_t = codes.permute(0, 2, 5, 6, 4, 1, 3).reshape(k, blocks * GEMV_BLOCK_ROWS)[:, :n]
    scale_zero = pairs_t.reshape(groups, blocks * GEMV_BLOCK_ROWS, 4).view(torch.bfloat16)
    return codes_t, scale_zero[:, :n]

"""4-bit weights in groups of 32 along the input dimension (asymmetric: a scale and a zero per group).

    w[n, k] = (code[n, k] - 8) * scale[k // 32, n] + zero[k // 32, n]        code in 0..15

Storage: the codes packed two per byte (half a byte per weight) and a (scale, zero) pair per
group in the activation dtype (2 values per 32 weights: another eighth of a byte). The layout
depends on where the weight runs (`Int4Weight.layout`):

- "gemv" (CPU with AVX512-BF16, bf16 activations, compiled kernels): one uint8 tensor in the
  layout of `torch.ops.pagedllm.gemv_int4` (csrc/quant_gemv.h, `pack_gemv`): output rows in
  blocks of 16, k-major, the codes and scales of 64 rows interleaved group by group, so that
  the kernel reads each thread's rows as one stream, once for up to 64 rows of x. Up to
  `GEMV_MAX_ROWS` rows (decode, small prefills) run it; more rows dequantize slices of the
  weight (`dequantize_int4_t`) for an ordinary matmul.
- "torch" (other CPUs, float32 models, or `PAGEDLLM_CPU_KERNELS=0`): the layout of torch's
  fused kernel (`aten._weight_int4pack_mm_for_cpu`), which runs up to `OP_MAX_ROWS` rows; it
  computes in float32 FMAs and dequantizes again for every 4 rows, so more rows dequantize.
- "plain" (CUDA): byte j of a row holds codes 2j and 2j + 1; every matmul dequantizes.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagedllm.model.layers.quantization.chunked import dequantized_matmul
from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks
from pagedllm.ops import cpu_kernels

logger = logging.getLogger(__name__)

GROUP_SIZE = 32
# Up to this many rows torch's fused CPU kernel is faster than unpack + bf16 matmul: the
# crossover was 75-100 rows on every shape of SmolLM2 (benchmarks/quant_quality.py --kernels).
OP_MAX_ROWS = 64
# Up to this many rows gemv_int4 runs (the "gemv" layout); more rows dequantize slices of the
# weight for a bf16 matmul. The crossover (benchmarks/quant_kernels.py --sweep, one thread,
# cold weights) was at 100-200 rows on SmolLM2's shapes: at 64 rows the kernel took 115 / 620 /
# 268 us (576x576 / 3072x576 / 576x1536) against 154 / 823 / 374 dequantizing; at 128 rows
# 251 / 1311 / 555 against 241 / 1284 / 621; at 256 rows dequantizing won by 1-14%.
GEMV_MAX_ROWS = 128
# The gemv layout (csrc/quant_gemv.h): blocks of 16 output rows, 4 blocks to a super-block;
# per block and group of 32 values of k, 256 bytes of codes and 64 of (scale, zero).
GEMV_BLOCK_ROWS = 16
GEMV_SUPER_BLOCKS = 4
_GROUP_BYTES, _SCALE_BYTES = 256, 64
LAYOUTS = ("gemv", "torch", "plain")
# The fused kernel packs output rows in blocks of 64 (tails of 16, 32 or 48).
_ROW_MULTIPLE = 16
# (rows % 64, cols) layouts whose unpacking has been checked against the kernel's packing.
_checked_layouts: dict[tuple[int, int], bool] = {}
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
_ops: dict[str, object] = {}


def _op(name: str):
    """torch.ops.pagedllm.<name> (looked up once: the ops exist once the kernels are built)."""
    if name not in _ops:
        _ops[name] = getattr(torch.ops.pagedllm, name).default
    return _ops[name]


def supports(out_features: int, in_features: int) -> bool:
    """Whether a [out, in] weight can be stored in 4-bit groups on CPU and elsewhere."""
    return out_features % _ROW_MULTIPLE == 0 and in_features % GROUP_SIZE == 0


def quantize_groups(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> Int4Blocks:
    """Round-to-nearest asymmetric 4-bit quantization of a float [N, K] weight, per group of K."""
    rows, cols = weight.shape
    grouped = weight.float().reshape(rows, cols // group_size, group_size)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = (high - low) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant group: code 0 is exact
    codes = torch.round((grouped - low.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp_(0, 15)
    return Int4Blocks(codes.to(torch.uint8).reshape(rows, cols), scale, low + 8 * scale, group_size)


class Int4Weight(nn.Module):
    """A [N, K] weight in 4-bit groups: `linear(x)` = x @ W^T, `dequantize()` = W.

    For C++ callers (layout "gemv", `uses_gemv_kernel`): `packed` is the weight argument of
    `pagedllm::gemv_int4` (csrc/quant_gemv.h; codes and scales in one tensor, `scale_zero` is
    None), which `linear` runs for up to `gemv_max_rows` rows of bf16 x.
    """

    def __init__(
        self, blocks: Int4Blocks, dtype: torch.dtype, fused: bool | None = None, layout: str | None = None
    ):
        """`layout`: one of LAYOUTS (default: the best one the device and `dtype` allow);
        `fused=False` asks for the plain layout (the dequantize path only)."""
        super().__init__()
        out_features, in_features = blocks.shape
        if not supports(out_features, in_features) or blocks.group_size != GROUP_SIZE:
            raise ValueError(f"cannot store a {out_features}x{in_features} weight in 4-bit groups")
        self.out_features, self.in_features = out_features, in_features
        self.group_size = blocks.group_size
        codes = blocks.codes
        if layout is None:
            layout = default_layout(dtype, codes.device) if fused is not False else "plain"
        if layout not in LAYOUTS:
            raise ValueError(f"int4 layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        self.unpackable = True
        self.activation_dtype = dtype  # of the scales, and of x for the fused kernels
        if layout == "gemv":
            if dtype != torch.bfloat16:
                raise ValueError(f"the gemv int4 layout takes bf16 activations, not {dtype}")
            packed, scale_zero = pack_gemv(codes, blocks.scale, blocks.zero), None
        else:
            # [K / g, N, 2]: torch's kernel's layout; the dequantize path reads its two planes.
            scale_zero = torch.stack([blocks.scale, blocks.zero], dim=-1).transpose(0, 1).contiguous()
            scale_zero = scale_zero.to(dtype)
            if layout == "torch":
                packed, self.unpackable = _pack_fused(codes)
            else:
                packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
        self.layout = layout
        self.fused = layout != "plain"
        self.register_buffer("packed", packed, persistent=True)
        self.register_buffer("scale_zero", scale_zero, persistent=True)
        # Rows up to which a fused kernel runs (all rows if the packing cannot be unpacked).
        rows = {"gemv": GEMV_MAX_ROWS, "torch": OP_MAX_ROWS if self.unpackable else 1 << 62, "plain": 0}
        self.fused_rows = rows[layout]

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, group {self.group_size}, {self.layout} layout"

    @property
    def uses_gemv_kernel(self) -> bool:
        """Whether `packed` is in gemv_int4's layout (see `gemv_max_rows`)."""
        return self.layout == "gemv"

    @property
    def gemv_max_rows(self) -> int:
        """Up to this many rows of bf16 x, `linear` runs gemv_int4 (0: it never does)."""
        return self.fused_rows if self.layout == "gemv" else 0

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + (0 if self.scale_zero is None else self.scale_zero.nbytes)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (in the scales' dtype for the fused kernels) -> x @ W^T + bias [..., N]."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.shape[0] <= self.fused_rows and x.dtype == self.activation_dtype:
            # (The buffer read from _buffers: a module attribute lookup cost 0.5 us per call.)
            if self.layout == "gemv":
                out = _op("int4_linear")(x, self._buffers["packed"], self.out_features)
            else:
                out = _INT4_MM(x.contiguous(), self.packed, self.group_size, self.scale_zero)
        else:
            rows_t = lambda a, b: self._rows_t(a, b, x.dtype)  # noqa: E731
            out = dequantized_matmul(x, self.out_features, rows_t)
        return out if bias is None else out + bias

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight [N, K]."""
        return self.dequantize_t(dtype).t()

    def dequantize_t(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The transposed weight [K, N], contiguous (the layout the unpacking produces cheaply)."""
        return self._rows_t(0, self.out_features, dtype or self.activation_dtype)

    def codes_t(self) -> torch.Tensor:
        """The codes transposed, uint8 [K, N]."""
        return self._codes_t(0, self.out_features)

    def _rows_t(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start..end of the weight, transposed: [K, end - start]."""
        k, g = self.in_features, self.group_size
        if (
            self.layout == "gemv"
            and dtype in (torch.bfloat16, torch.float32)
            and start % GEMV_BLOCK_ROWS == 0
        ):
            out = torch.empty(k, end - start, dtype=dtype)
            _op("dequantize_int4_t")(out, self.packed, start)
            return out
        codes = self._codes_t(start, end).view(k // g, g, end - start)
        scale_zero = self._scale_zero_t(start, end).to(dtype)
        scale = scale_zero[..., 0].contiguous()  # a strided scale would slow the multiply 10x
        offset = scale_zero[..., 1] - 8 * scale  # w = code * scale + offset
        return torch.addcmul(offset.unsqueeze(1), codes, scale.unsqueeze(1)).view(k, end - start)

    def _scale_zero_t(self, start: int, end: int) -> torch.Tensor:
        """[K / g, end - start, 2] (scale, zero) of rows start..end."""
        if self.layout == "gemv":
            return unpack_gemv(self.packed, self.out_features, self.in_features)[1][:, start:end]
        return self.scale_zero[:, start:end]

    def _codes_t(self, start: int, end: int) -> torch.Tensor:
        """uint8 [K, end - start] codes of rows start..end (start a multiple of 64)."""
        if self.layout == "gemv":
            return unpack_gemv(self.packed, self.out_features, self.in_features)[0][:, start:end].contiguous()
        if self.layout == "torch":
            if not self.unpackable:
                raise RuntimeError("this build's int4 packing layout is not understood; use linear()")
            half = self.in_features // 2
            flat = self.packed.reshape(-1)[start * half : end * half]
            return _unpack_fused_t(flat, end - start, self.in_features)
        packed = self.packed[start:end]
        codes = torch.stack([packed & 15, packed >> 4], dim=-1)
        return codes.view(end - start, self.in_features).t().contiguous()


def default_layout(dtype: torch.dtype, device: torch.device | str) -> str:
    """The layout an Int4Weight takes by default for `dtype` activations on `device`."""
    if torch.device(device).type != "cpu":
        return "plain"
    return "gemv" if cpu_kernels.int4_gemv_supported(dtype, device) else "torch"


def pack_gemv(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """gemv_int4's `packed` (uint8, ceil(N / 16) * K * 10 bytes, see csrc/quant_gemv.h) from
    codes uint8 [N, K] and scale / zero [N, K / 32] (stored in bf16)."""
    n, k = codes.shape
    blocks, groups = -(-n // GEMV_BLOCK_ROWS), k // GROUP_SIZE
    pad = blocks * GEMV_BLOCK_ROWS - n
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad, k)])
        scale = torch.cat([scale, scale.new_zeros(pad, groups)])
        zero = torch.cat([zero, zero.new_zeros(pad, groups)])
    # k = 32 g + 8 line + 4 j2 + 2 jl + h -> byte 2 h + j2 of the row's uint32, nibble jl.
    c = codes.view(blocks, GEMV_BLOCK_ROWS, groups, 4, 2, 2, 2).permute(0, 2, 3, 1, 6, 4, 5)
    lines = (c[..., 0] | (c[..., 1] << 4)).reshape(blocks, groups, _GROUP_BYTES)
    pairs = torch.stack([scale, zero], dim=-1).to(torch.bfloat16).view(torch.uint8)  # [N, groups, 4]
    pairs = (
        pairs.view(blocks, GEMV_BLOCK_ROWS, groups, 4).transpose(1, 2).reshape(blocks, groups, _SCALE_BYTES)
    )
    full = blocks // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
    parts = []
    for start, end in ((0, full), (full, blocks)):
        if end > start:  # all full super-blocks at once, then the last (1..3 blocks), if any
            nb = min(end - start, GEMV_SUPER_BLOCKS)
            chunks = [t[start:end].view(-1, nb, groups, t.shape[-1]).transpose(1, 2) for t in (lines, pairs)]
            parts.append(
                torch.cat([t.reshape(-1, groups, nb * t.shape[-1]) for t in chunks], dim=2).reshape(-1)
            )
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def unpack_gemv(packed: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes_t uint8 [K, N], scale_zero bf16 [K / 32, N, 2]) from `pack_gemv`'s layout."""
    blocks, groups = -(-n // GEMV_BLOCK_ROWS), k // GROUP_SIZE
    full = blocks // GEMV_SUPER_BLOCKS * GEMV_SUPER_BLOCKS
    block_bytes = groups * (_GROUP_BYTES + _SCALE_BYTES)
    lines, pairs = [], []
    for start, end in ((0, full), (full, blocks)):
        if end > start:
            nb = min(end - start, GEMV_SUPER_BLOCKS)
            chunk = packed[start * block_bytes : end * block_bytes].view(
                -1, groups, nb * (_GROUP_BYTES + _SCALE_BYTES)
            )
            lines.append(
                chunk[..., : nb * _GROUP_BYTES].reshape(-1, groups, nb, _GROUP_BYTES).transpose(1, 2)
            )
            pairs.append(
                chunk[..., nb * _GROUP_BYTES :].reshape(-1, groups, nb, _SCALE_BYTES).transpose(1, 2)
            )
    lines_t = torch.cat([t.reshape(-1, groups, _GROUP_BYTES) for t in lines]).transpose(
        0, 1
    )  # [groups, blocks, 256]
    pairs_t = torch.cat([t.reshape(-1, groups, _SCALE_BYTES) for t in pairs]).transpose(0, 1)
    p = lines_t.reshape(groups, blocks, 4, GEMV_BLOCK_ROWS, 2, 2)  # g, block, line, row, h, j2
    codes = torch.stack([p & 15, p >> 4], dim=-1)  # ..., jl
    codes_t = codes.permute(0, 2, 5, 6, 4, 1, 3).reshape(k, blocks * GEMV_BLOCK_ROWS)[:, :n]
    scale_zero = pairs_t.reshape(groups, blocks * GEMV_BLOCK_ROWS, 4).view(torch.bfloat16)
    return codes_t, scale_zero[:, :n]


def _pack_fused(codes: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(packed codes for `_weight_int4pack_mm_for_cpu`, whether `_unpack_fused_t` reads them back).

    torch's own packer takes the codes as int32 (four bytes per weight, for 106 M weights a
    second of page faults at load); packing them here takes uint8 passes. The layout is torch's
    AVX-512 one (see `_unpack_fused_t`), which depends on the CPU's vector width (torch picks it
    at run time): it is compared with torch's packing once per layout shape, and where it
    differs torch's packer is used and only the fused kernel runs (correct, slower for many rows).
    """
    n, k = codes.shape
    key = (n % 64, k)
    if key not in _checked_layouts:
        reference = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
        ours = _pack_avx512(codes)
        _checked_layouts[key] = torch.equal(ours.view(-1), reference.reshape(-1))
        if not _checked_layouts[key]:
            logger.warning(
                "int4: torch's CPU packing layout (capability %s) is not the AVX-512 one; "
                "large batches will run the fused kernel",
                torch.backends.cpu.get_cpu_capability(),
            )
            return reference, False
        return ours.view_as(reference), True
    if _checked_layouts[key]:
        return _pack_avx512(codes), True
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1), False


def _pack_avx512(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K / 2] in the layout `_unpack_fused_t` describes, from uint8 codes [N, K]."""
    n, k = codes.shape
    full = n // 64 * 64
    parts = []
    if full:
        blocks = codes[:full].view(full // 64, 2, 32, k)  # rows 0..31 and 32..63 of each block
        packed = blocks[:, 0] | (blocks[:, 1] << 4)  # [blocks, 32, K]
        parts.append(packed.transpose(1, 2).reshape(-1))  # k-major within a block
    if n > full:
        tail = codes[full:].view((n - full) // 2, 2, k)  # row pairs (2j, 2j + 1)
        parts.append((tail[:, 0] | (tail[:, 1] << 4)).t().reshape(-1))
    return torch.cat(parts).view(n, k // 2) if len(parts) > 1 else parts[0].view(n, k // 2)


def _unpack_fused_t(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """uint8 [K, N] codes from `_convert_weight_to_int4pack_for_cpu`'s AVX-512 layout.

    Rows come in blocks of 64, stored k-major: for each k, 32 bytes whose low nibbles are the
    block's rows 0..31 and high nibbles rows 32..63. A tail block of 16, 32 or 48 rows stores,
    for each k, bytes holding rows (2j, 2j + 1) in (low, high) nibbles.
    """
    flat = packed.reshape(-1)
    full = n // 64 * 64
    parts = []
    if full:
        blocks = flat[: full * k // 2].view(full // 64, k, 32)
        halves = torch.cat([blocks & 15, blocks >> 4], dim=2)  # [blocks, K, 64]
        parts.append(halves.transpose(0, 1).reshape(k, full))
    if n > full:
        tail = flat[full * k // 2 :].view(k, (n - full) // 2)
        parts.append(torch.stack([tail & 15, tail >> 4], dim=-1).view(k, n - full))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

"""4-bit weights in groups of G = 32, 64 or 128 along the input dimension (asymmetric: a scale
and a zero per group).

    w[n, k] = (code[n, k] - 8) * scale[k // G, n] + zero[k // G, n]        code in 0..15

Storage: the codes packed two per byte (half a byte per weight) and a (scale, zero) pair per
group in the activation dtype (2 values per G weights: another 4 / G bytes). This module
holds the portable formats (`Int4Weight.layout`):

- "torch" (tensors on the CPU): the layout of torch's fused kernel
  (`aten._weight_int4pack_mm_for_cpu`), which runs up to `OP_MAX_ROWS` rows; it computes in
  float32 FMAs and dequantizes again for every 4 rows, so more rows dequantize.
- "plain" (other devices): byte j of a row holds codes 2j and 2j + 1; every matmul dequantizes.

A platform may hand the layers a format of its own instead (`LayerOps.int4_weight`; the CPU
platform's lives in ops/int4_gemv.py, the CUDA platform's in ops/triton_quant_linear.py) built
from the same `Int4Blocks`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks
from pagedllm.ops.dequantized_matmul import dequantized_matmul
from pagedllm.ops.int4_gemv import GROUP_SIZE, GROUP_SIZES

logger = logging.getLogger(__name__)

# GROUP_SIZE, the default group, and GROUP_SIZES, the sizes every 4-bit format here takes, are
# the compiled kernel's (torch's op takes them too), so that a scheme runs on every platform.

# Up to this many rows torch's fused int4 op is faster than unpack + bf16 matmul: the
# crossover was 75-100 rows on every shape of SmolLM2 (benchmarks/quant_quality.py --kernels).
OP_MAX_ROWS = 64
LAYOUTS = ("torch", "plain")
# The fused kernel packs output rows in blocks of 64 (tails of 16, 32 or 48).
_ROW_MULTIPLE = 16
# (rows % 64, cols) layouts whose unpacking has been checked against the kernel's packing.
_checked_layouts: dict[tuple[int, int], bool] = {}
_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default


def supports(out_features: int, in_features: int) -> bool:
    """Whether a [out, in] weight can be stored in 4-bit groups on CPU and elsewhere."""
    return out_features % _ROW_MULTIPLE == 0 and in_features % GROUP_SIZE == 0


def group_size_for(in_features: int, preferred: int = GROUP_SIZE) -> int:
    """The largest group size up to `preferred` (one of GROUP_SIZES) that divides `in_features`
    (at least 32; `supports` tells whether 32 does)."""
    if preferred not in GROUP_SIZES:
        raise ValueError(
            f"4-bit group size must be one of {', '.join(map(str, GROUP_SIZES))}; got {preferred}"
        )
    size = preferred
    while size > GROUP_SIZE and in_features % size:
        size //= 2
    return size


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
    """A [N, K] weight in 4-bit groups: `linear(x)` = x @ W^T, `dequantize()` = W."""

    def __init__(
        self, blocks: Int4Blocks, dtype: torch.dtype, fused: bool | None = None, layout: str | None = None
    ):
        """`layout`: one of LAYOUTS (default: "torch" for CPU tensors, else "plain");
        `fused=False` asks for the plain layout (the dequantize path only)."""
        super().__init__()
        out_features, in_features = blocks.shape
        if not supports(out_features, in_features) or blocks.group_size not in GROUP_SIZES:
            raise ValueError(f"cannot store a {out_features}x{in_features} weight in 4-bit groups")
        self.out_features, self.in_features = out_features, in_features
        self.group_size = blocks.group_size
        codes = blocks.codes
        if layout is None:
            layout = default_layout(codes.device) if fused is not False else "plain"
        if layout not in LAYOUTS:
            raise ValueError(f"int4 layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        self.unpackable = True
        self.activation_dtype = dtype  # of the scales, and of x for the fused kernel
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
        rows = {"torch": OP_MAX_ROWS if self.unpackable else 1 << 62, "plain": 0}
        self.fused_rows = rows[layout]

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, group {self.group_size}, {self.layout} layout"

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scale_zero.nbytes

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., K] (in the scales' dtype for the fused kernels) -> x @ W^T + bias [..., N]."""
        if x.dim() != 2:
            out = self.linear(x.reshape(-1, self.in_features), bias)
            return out.reshape(*x.shape[:-1], self.out_features)
        if x.shape[0] <= self.fused_rows and x.dtype == self.activation_dtype:
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
        codes = self._codes_t(start, end).view(k // g, g, end - start)
        scale_zero = self._scale_zero_t(start, end).to(dtype)
        scale = scale_zero[..., 0].contiguous()  # a strided scale would slow the multiply 10x
        offset = scale_zero[..., 1] - 8 * scale  # w = code * scale + offset
        return torch.addcmul(offset.unsqueeze(1), codes, scale.unsqueeze(1)).view(k, end - start)

    def _scale_zero_t(self, start: int, end: int) -> torch.Tensor:
        """[K / g, end - start, 2] (scale, zero) of rows start..end."""
        return self.scale_zero[:, start:end]

    def _codes_t(self, start: int, end: int) -> torch.Tensor:
        """uint8 [K, end - start] codes of rows start..end (start a multiple of 64)."""
        if self.layout == "torch":
            if not self.unpackable:
                raise RuntimeError("this build's int4 packing layout is not understood; use linear()")
            half = self.in_features // 2
            flat = self.packed.reshape(-1)[start * half : end * half]
            return _unpack_fused_t(flat, end - start, self.in_features)
        packed = self.packed[start:end]
        codes = torch.stack([packed & 15, packed >> 4], dim=-1)
        return codes.view(end - start, self.in_features).t().contiguous()


def default_layout(device: torch.device | str) -> str:
    """The layout an Int4Weight takes by default for weights on `device`: torch's fused CPU
    kernel's on the CPU, the plain one elsewhere."""
    return "torch" if torch.device(device).type == "cpu" else "plain"


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

"""Weight-only int8 and int4 matmuls as Triton kernels: out [M, N] = x [M, K] @ dequant(W)^T + bias.

The weights stay in memory as stored (layouts: ops/triton_quant_linear.py) and are dequantized
in registers, one tile at a time, right before `tl.dot`; products accumulate in float32 and
the output is rounded once to x's dtype (bf16, fp16; float32 multiplies in IEEE precision, not
TF32, which is also what the interpreter tests).

- int8 (`qweight` [N, K] int8, `scale` [N]): codes -127..127 are exact in bf16 and fp16, so
  the dot runs on the codes themselves and the scale multiplies each float32 sum once.
- int4 (`codes` [N, K / 2] uint8, `scale`, `zero` [K / 32, N]): per group of 32 values of K,
  w = code * scale + (zero - 8 * scale), computed in float32 and rounded to x's dtype; a
  group's low nibbles are its first 16 values of K and its high nibbles the last 16, so each
  half multiplies 16 contiguous values of x (two dots of depth 16 per group).

Tiles come from `triton_quant_tiles.choose_tiles` (by M: decode or prefill). With split-K each
program writes a float32 partial sum [split, M, N] and `_split_k_sum_kernel` adds them, the
bias and the rounding. Import this module only once TRITON_INTERPRET is settled (the weight
modules do it when they are built).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.ops.triton_launch import TritonLaunch, dot_precision, multiprocessors
from pagedllm.ops.triton_quant_tiles import QuantTiles, choose_tiles

INT4_GROUP = 32
_SUM_BLOCK = 1024
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _store_tile(
    acc,
    bias_ptr,
    out_ptr,  # [M, N] in x's dtype, or with split-K the partials [SPLIT_K, M, N] float32
    rows,
    cols,
    M,
    N,
    split,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + split.to(tl.int64) * M * N + offsets, acc, mask=mask)


@triton.jit
def _int8_matmul_kernel(
    x_ptr,  # [M, K], unit stride along K
    w_ptr,  # int8 [N, K] contiguous
    scale_ptr,  # [N]
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    row_ok = rows < M
    col_ok = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
    ks = tl.arange(0, BLOCK_K)
    # This program's range of iterations over K (all of them without split-K).
    per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)
    first = split * per_split
    last = tl.minimum(first + per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(first, last):
        k = it * BLOCK_K + ks
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        q = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0)
        acc = tl.dot(x, tl.trans(q.to(x.dtype)), acc, input_precision=DOT_PRECISION)
    acc = acc * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    _store_tile(acc, bias_ptr, out_ptr, rows, cols, M, N, split, SPLIT_K, HAS_BIAS)


@triton.jit
def _int4_matmul_kernel(
    x_ptr,  # [M, K], unit stride along K
    codes_ptr,  # uint8 [N, K / 2]: byte 16 g + j of a row = code(32 g + j) | code(32 g + 16 + j) << 4
    scale_ptr,  # [K / 32, N]
    zero_ptr,  # [K / 32, N]
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,  # groups of 32 values of K per iteration; divides K / 32
    SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(2)
    row_ok = rows < M
    col_ok = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    code_rows = codes_ptr + cols.to(tl.int64)[:, None] * (K // 2)
    half = tl.arange(0, 16)
    # Whole iterations only (GROUPS divides the group count): no mask along K.
    iterations = K // (32 * GROUPS)
    per_split = tl.cdiv(iterations, SPLIT_K)
    first = split * per_split
    last = tl.minimum(first + per_split, iterations)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(first, last):
        for i in tl.static_range(GROUPS):
            g = it * GROUPS + i
            packed = tl.load(code_rows + (g * 16 + half)[None, :], mask=col_ok[:, None], other=0)
            scale = tl.load(scale_ptr + g * N + cols, mask=col_ok, other=0.0).to(tl.float32)
            offset = tl.load(zero_ptr + g * N + cols, mask=col_ok, other=0.0).to(tl.float32) - 8.0 * scale
            x_low = tl.load(x_rows + (g * 32 + half)[None, :], mask=row_ok[:, None], other=0.0)
            x_high = tl.load(x_rows + (g * 32 + 16 + half)[None, :], mask=row_ok[:, None], other=0.0)
            low = (packed & 15).to(tl.float32) * scale[:, None] + offset[:, None]
            high = (packed >> 4).to(tl.float32) * scale[:, None] + offset[:, None]
            acc = tl.dot(x_low, tl.trans(low.to(x_low.dtype)), acc, input_precision=DOT_PRECISION)
            acc = tl.dot(x_high, tl.trans(high.to(x_high.dtype)), acc, input_precision=DOT_PRECISION)
    _store_tile(acc, bias_ptr, out_ptr, rows, cols, M, N, split, SPLIT_K, HAS_BIAS)


@triton.jit
def _split_k_sum_kernel(
    partials_ptr,  # [SPLIT_K, M, N] float32
    bias_ptr,  # [N] (HAS_BIAS)
    out_ptr,  # [M, N]
    size,  # M * N
    N,
    SPLIT_K: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < size
    # Added in split order: the same sum for every launch of this shape.
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        total += tl.load(partials_ptr + s * size + offsets, mask=ok, other=0.0)
    if HAS_BIAS:
        total += tl.load(bias_ptr + offsets % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=ok)


def int8_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles: QuantTiles | None = None,
) -> torch.Tensor:
    """x [M, K] @ (qweight [N, K] * scale [N, None])^T + bias -> [M, N] in x's dtype."""
    out = torch.empty(x.shape[0], qweight.shape[0], dtype=x.dtype, device=x.device)
    for launch in int8_launches(_checked(x, qweight.shape[1]), qweight, scale, bias, out, tiles):
        launch.run()
    return out


def int4_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles: QuantTiles | None = None,
) -> torch.Tensor:
    """x [M, K] @ W^T + bias -> [M, N] in x's dtype, W the 4-bit weight (`codes` [N, K / 2],
    `scale` / `zero` [K / 32, N]; layout in ops/triton_quant_linear.py)."""
    out = torch.empty(x.shape[0], codes.shape[0], dtype=x.dtype, device=x.device)
    for launch in int4_launches(_checked(x, codes.shape[1] * 2), codes, scale, zero, bias, out, tiles):
        launch.run()
    return out


def int8_launches(x, qweight, scale, bias, out, tiles: QuantTiles | None = None) -> list[TritonLaunch]:
    """What `int8_linear` runs: the matmul, then with split-K the sum of the partials."""
    (m, k), n = x.shape, qweight.shape[0]
    if m == 0:
        return []
    tiles = tiles or choose_tiles(m, n, k, multiprocessors(x.device))
    target = _target(out, tiles.split_k)
    args = (x, qweight, scale, _or(bias, out), target, m, n, k, x.stride(0))
    constants = dict(
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        SPLIT_K=tiles.split_k,
        HAS_BIAS=bias is not None,
        DOT_PRECISION=dot_precision(x.dtype),
    )
    launch = TritonLaunch(
        _int8_matmul_kernel, _grid(m, n, tiles), args, constants, tiles.num_warps, tiles.num_stages
    )
    return [launch, *_sum_launches(target, bias, out, tiles.split_k)]


def int4_launches(x, codes, scale, zero, bias, out, tiles: QuantTiles | None = None) -> list[TritonLaunch]:
    """What `int4_linear` runs: the matmul, then with split-K the sum of the partials."""
    (m, k), n = x.shape, codes.shape[0]
    if m == 0:
        return []
    tiles = tiles or choose_tiles(m, n, k, multiprocessors(x.device))
    if tiles.block_k % INT4_GROUP or k % INT4_GROUP:
        raise ValueError(
            f"4-bit tiles take K in whole groups of {INT4_GROUP}; got K {k}, block_k {tiles.block_k}"
        )
    target = _target(out, tiles.split_k)
    args = (x, codes, scale, zero, _or(bias, out), target, m, n, k, x.stride(0))
    constants = dict(
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        GROUPS=groups_per_iteration(tiles.block_k, k),
        SPLIT_K=tiles.split_k,
        HAS_BIAS=bias is not None,
        DOT_PRECISION=dot_precision(x.dtype),
    )
    launch = TritonLaunch(
        _int4_matmul_kernel, _grid(m, n, tiles), args, constants, tiles.num_warps, tiles.num_stages
    )
    return [launch, *_sum_launches(target, bias, out, tiles.split_k)]


def groups_per_iteration(block_k: int, k: int) -> int:
    """Groups of 32 per iteration of the 4-bit kernel: as many as `block_k` holds, halved until
    they divide K's group count (K = 576: 18 groups, 2 per iteration), so no iteration is partial."""
    groups, total = block_k // INT4_GROUP, k // INT4_GROUP
    while total % groups:
        groups //= 2
    return groups


def _checked(x: torch.Tensor, in_features: int) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"expected activations [M, {in_features}]; got {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(
            f"the quantized Triton matmuls take bf16, fp16 or float32 activations; got {x.dtype}"
        )
    return x if x.stride(1) == 1 else x.contiguous()


def _target(out: torch.Tensor, split_k: int) -> torch.Tensor:
    if split_k == 1:
        return out
    m, n = out.shape
    return torch.empty(split_k, m, n, dtype=torch.float32, device=out.device)


def _sum_launches(partials, bias, out, split_k: int) -> list[TritonLaunch]:
    if split_k == 1:
        return []
    m, n = out.shape
    grid = (triton.cdiv(m * n, _SUM_BLOCK),)
    constants = dict(SPLIT_K=split_k, BLOCK=_SUM_BLOCK, HAS_BIAS=bias is not None)
    return [TritonLaunch(_split_k_sum_kernel, grid, (partials, _or(bias, out), out, m * n, n), constants)]


def _grid(m: int, n: int, tiles: QuantTiles) -> tuple[int, int, int]:
    return (triton.cdiv(n, tiles.block_n), triton.cdiv(m, tiles.block_m), tiles.split_k)


def _or(bias: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """The bias, or any tensor in its place when HAS_BIAS is off (never read)."""
    return placeholder if bias is None else bias

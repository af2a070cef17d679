"""The 4-bit skinny matmul kernel (torch.ops.pagedllm.gemv_int4) and its packed layout.

The kernel multiplies exactly (bf16 x by 4-bit codes) and accumulates in float32, so against a
float64 product with the dequantized weight its only errors are the bf16 rounding of the
output (half an ulp, allowed: one ulp) and float32 accumulation (allowed: 1e-5 of the sum of
|x| |w|, which also covers results that cancel to near zero). The same bounds hold for the
AVX2 build (codes as exact float32, FMA with float32 x), whose kernel tests run too
(`vector_target`: once per build).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.config import EngineConfig
from pagedllm.model.layers.quantization import Int4Blocks, Int4Weight
from pagedllm.ops import cpu_kernels
from pagedllm.ops.int4_gemv import GEMV_MAX_ROWS, GemvInt4Weight, pack_gemv, unpack_gemv
from pagedllm.platforms import resolve_platform


@pytest.fixture
def vector_target(kernel_target):
    """Runs a kernel test on each build whose gemv_int4 has vector paths (AVX512-BF16, AVX2)."""
    if kernel_target == "scalar":
        pytest.skip("gemv_int4 needs AVX512-BF16 or AVX2 + FMA")
    return kernel_target


# SmolLM2-135M's projections (qkv, o, gate/up, down; 960 rows end in a super-block of 3
# blocks) and shapes with tails: a padded block (N % 16 != 0), a single block, last
# super-blocks of 1..3 blocks, a K of one group.
SMOLLM2_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
TAIL_SHAPES = [(40, 64), (16, 32), (200, 96), (1000, 128), (8, 32), (112, 64)]
ROWS = [1, 2, 3, 4, 5, 8, 9, 16, 17, 33, 64, 65, 130]


def random_weight(
    n: int, k: int, seed: int = 0, group: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes uint8 [N, K]; scale and zero [N, K / group], bf16-representable (what the layout stores)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scale = (torch.rand(n, k // group, generator=gen) * 0.02 + 0.001).to(torch.bfloat16).float()
    zero = (torch.randn(n, k // group, generator=gen) * 0.05).to(torch.bfloat16).float()
    return codes, scale, zero


def weight_of(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return Int4Blocks(codes, scale, zero, codes.shape[1] // scale.shape[1]).dequantize(torch.float64)


def assert_close_to_product(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, label: str) -> None:
    """bf16 `out` against x @ weight^T in float64: one ulp, plus float32 accumulation error."""
    expected = x.double() @ weight.double().t()
    magnitude = x.double().abs() @ weight.double().abs().t()
    bound = expected.abs() * 2.0**-8 + 1e-5 * magnitude
    excess = (out.double() - expected).abs() - bound
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape, label
    assert (excess <= 0).all(), f"{label}: {int((excess > 0).sum())} outputs off, worst by {excess.max():.3g}"


def run_kernel(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    cpu_kernels.op("gemv_int4")(out, x, packed)
    return out


def run_forced(kernel: str, x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    cpu_kernels.op("gemv_int4_kernel")(out, x, packed, kernel)
    return out


def assert_from_a_kernel(
    out: torch.Tensor, x: torch.Tensor, packed: torch.Tensor, n: int, label: str
) -> None:
    """`out` is exactly what one of the kernels gives for x (each is checked against its own
    reference below): the vector kernel, or the tiles where they can run."""
    if torch.equal(out, run_forced("vector", x, packed, n)):
        return
    assert cpu_kernels.amx_tiles() and n % 16 == 0, f"{label}: not the vector kernel's result"
    assert torch.equal(out, run_forced("amx", x, packed, n)), f"{label}: neither kernel's result"


def tile_kernel_or_skip() -> None:
    if not cpu_kernels.amx_tiles():
        pytest.skip("no AMX tile kernel in this build, or no tile state from the OS")


@pytest.mark.parametrize(("n", "k"), SMOLLM2_SHAPES + TAIL_SHAPES)
def test_pack_gemv_round_trip(n, k):
    codes, scale, zero = random_weight(n, k)
    packed = pack_gemv(codes, scale, zero)
    blocks = -(-n // 16)
    assert packed.dtype == torch.uint8 and packed.shape == (blocks * k * 10,)
    codes_t, scale_zero = unpack_gemv(packed, n, k)
    assert torch.equal(codes_t, codes.t())
    assert torch.equal(scale_zero.float(), torch.stack([scale, zero], -1).transpose(0, 1))
    # The documented byte positions, in the first super-block (4 blocks, or fewer if N < 64).
    nb, groups = min(blocks, 4), k // 32
    chunk = packed[: nb * 320 * groups].view(groups, nb * 320)
    block, row, g, line = min(1, nb - 1), 3, groups - 1, 2
    word = int(chunk[g, block * 256 + line * 64 + row * 4 :][:4].view(torch.int32).item()) & 0xFFFFFFFF
    n_idx, k0 = block * 16 + row, 32 * g + 8 * line
    if n_idx < n:
        for j in range(4):
            assert (word >> (4 * j)) & 15 == codes[n_idx, k0 + 2 * j]
            assert (word >> (16 + 4 * j)) & 15 == codes[n_idx, k0 + 2 * j + 1]
        pair = chunk[g, nb * 256 + block * 64 + row * 4 :][:4].view(torch.bfloat16).float()
        assert pair.tolist() == [scale[n_idx, g].item(), zero[n_idx, g].item()]


@pytest.mark.parametrize(("n", "k"), SMOLLM2_SHAPES + TAIL_SHAPES)
def test_gemv_int4_matches_float_product(n, k, vector_target):
    """The vector kernel (forced, so that every row count reaches it) multiplies the codes
    exactly: against the float64 product with the exact weight."""
    codes, scale, zero = random_weight(n, k, seed=n + k)
    packed = pack_gemv(codes, scale, zero)
    weight = weight_of(codes, scale, zero)
    gen = torch.Generator().manual_seed(1)
    for rows in ROWS:
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        assert_close_to_product(run_forced("vector", x, packed, n), x, weight, f"{n}x{k}, {rows} rows")


# Weights the tile path takes (N % 16 == 0): last super-blocks of 1..4 blocks (strips of two
# blocks and of one), K of one group.
TILE_SHAPES = [shape for shape in SMOLLM2_SHAPES + TAIL_SHAPES if shape[0] % 16 == 0] + [(96, 64), (48, 32)]


@pytest.mark.parametrize(("n", "k"), TILE_SHAPES)
def test_tile_kernel_matches_the_bf16_weight_product(n, k):
    """The tile path (forced) multiplies the weight dequantize_int4_t gives, (code - 8) * scale +
    zero in float32 rounded to bf16, with float32 sums: against the float64 product with that
    weight, the vector kernel's bounds (1 x tile or 2, 1 weight tile or 2, padded last row
    blocks, further row blocks from the strip's converted tiles)."""
    tile_kernel_or_skip()
    codes, scale, zero = random_weight(n, k, seed=3 * n + k)
    packed = pack_gemv(codes, scale, zero)
    weight = weight_of(codes, scale, zero).float().to(torch.bfloat16)
    gen = torch.Generator().manual_seed(4)
    for rows in ROWS:
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        assert_close_to_product(run_forced("amx", x, packed, n), x, weight, f"amx {n}x{k}, {rows} rows")


def test_dispatch_takes_the_vector_kernel_for_few_rows_and_the_tiles_for_many(vector_target):
    """gemv_int4 gives exactly what one of the two kernels gives: the vector kernel for one row
    and wherever the tiles cannot run (no tile kernel, N % 16 != 0), the tiles for 130 rows
    where they can."""
    gen = torch.Generator().manual_seed(8)
    for n, k in ((960, 576), (40, 64)):
        codes, scale, zero = random_weight(n, k, seed=n)
        packed = pack_gemv(codes, scale, zero)
        tiles = cpu_kernels.amx_tiles() and n % 16 == 0
        for rows in ROWS:
            x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
            out, vector = run_kernel(x, packed, n), run_forced("vector", x, packed, n)
            on_tiles = tiles and torch.equal(out, run_forced("amx", x, packed, n))
            assert torch.equal(out, vector) or on_tiles, f"{n}x{k}, {rows} rows"
            if rows == 1 or not tiles:
                assert torch.equal(out, vector), f"{n}x{k}, {rows} rows"
            if rows == 130 and tiles:
                assert on_tiles, f"{n}x{k}, {rows} rows"


def test_forcing_the_tile_kernel_where_it_cannot_run_says_why(vector_target):
    codes, scale, zero = random_weight(40, 64, seed=9)
    packed = pack_gemv(codes, scale, zero)
    x = torch.zeros(20, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="must be 'vector' or 'amx'"):
        run_forced("tiles", x, packed, 40)
    with pytest.raises(RuntimeError, match="N % 16 != 0"):
        run_forced("amx", x, packed, 40)


def test_gemv_int4_exact_on_integers(vector_target):
    """Small integer x, scales and zeros: every product and sum is exact in float32, so the
    output is the exact product rounded once to bf16."""
    gen = torch.Generator().manual_seed(2)
    n, k = 48, 96
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scale = torch.randint(1, 4, (n, k // 32), generator=gen).float()
    zero = torch.randint(-3, 4, (n, k // 32), generator=gen).float()
    packed = pack_gemv(codes, scale, zero)
    x = torch.randint(-2, 3, (5, k), generator=gen).to(torch.bfloat16)
    expected = x.double() @ weight_of(codes, scale, zero).t()
    assert torch.equal(run_kernel(x, packed, n), expected.to(torch.bfloat16))


def test_gemv_int4_strided_rows_and_output(vector_target):
    """x rows and out rows with strides past their width (views into wider tensors)."""
    n, k = 80, 128
    codes, scale, zero = random_weight(n, k, seed=3)
    packed = pack_gemv(codes, scale, zero)
    wide_x = torch.randn(6, k + 64).to(torch.bfloat16)
    x = wide_x[:, 32 : 32 + k]
    wide_out = torch.zeros(6, n + 16, dtype=torch.bfloat16)
    out = wide_out[:, :n]
    cpu_kernels.op("gemv_int4")(out, x, packed)
    assert torch.equal(out, run_kernel(x.contiguous(), packed, n)), "strided"
    assert_from_a_kernel(out, x.contiguous(), packed, n, "strided")
    assert (wide_out[:, n:] == 0).all()  # the padded tail block is not written past N
    # The functional form (what Int4Weight.linear calls) takes any x, even with K strided.
    assert torch.equal(cpu_kernels.op("int4_linear")(x, packed, n), out)
    x_t = x.t().contiguous().t()  # unit stride along M, not K
    assert x_t.stride(1) != 1 and torch.equal(cpu_kernels.op("int4_linear")(x_t, packed, n), out)


def test_gemv_int4_rejects_what_it_cannot_take(vector_target):
    codes, scale, zero = random_weight(32, 64)
    packed = pack_gemv(codes, scale, zero)
    out = torch.empty(1, 32, dtype=torch.bfloat16)
    x = torch.randn(1, 64).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="gemv_int4"):
        cpu_kernels.op("gemv_int4")(out, x.float(), packed)  # float32 x
    with pytest.raises(RuntimeError, match="gemv_int4"):
        cpu_kernels.op("gemv_int4")(out, torch.randn(1, 96).to(torch.bfloat16), packed)  # K
    with pytest.raises(RuntimeError, match="gemv_int4"):  # N beyond the packed blocks
        cpu_kernels.op("gemv_int4")(torch.empty(1, 48, dtype=torch.bfloat16), x, packed)


@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (80, 96)])
def test_int4_weight_runs_the_kernel_and_matches_the_dequantize_path(n, k, vector_target):
    codes, scale, zero = random_weight(n, k, seed=4)
    q = GemvInt4Weight(codes, scale, zero)
    spec = q.weight_spec()
    assert spec.kind == "int4_gemv" and spec.tensor is q.packed and spec.max_rows == GEMV_MAX_ROWS
    assert q.nbytes == q.packed.nbytes == n * k * 10 // 16
    # The layout round-trips: codes and the dequantized weight are the blocks'.
    assert torch.equal(q.codes_t().t(), codes)
    assert torch.equal(q.dequantize(torch.float32), Int4Blocks(codes, scale, zero, 32).dequantize())
    weight = q.dequantize(torch.float32)
    gen = torch.Generator().manual_seed(5)
    rows = GEMV_MAX_ROWS + 3
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    many = q.linear(x)  # the dequantize path (bf16 weight, bf16 matmul)
    assert_close_to_product_loose(many, x, weight, "dequantize path")
    for m in (1, 3, 8, 16, GEMV_MAX_ROWS):
        few = q.linear(x[:m])  # the kernel
        assert_from_a_kernel(few, x[:m], q.packed, n, f"GemvInt4Weight kernel, {m} rows")
        # Both paths give the same products to bf16 precision.
        torch.testing.assert_close(few, many[:m], atol=2e-2 * many.abs().max().item(), rtol=0)
    bias = torch.randn(n).to(torch.bfloat16)
    three_d = q.linear(x[:4].view(2, 2, k), bias)
    torch.testing.assert_close(three_d.view(4, n), q.linear(x[:4]) + bias)


def assert_close_to_product_loose(out, x, weight, label):
    """The dequantize path rounds the weight to bf16 before a bf16 matmul: 2% of the output scale."""
    expected = F.linear(x.double(), weight.double())
    err = (out.double() - expected).abs().max().item()
    assert err <= 2e-2 * expected.abs().max().item(), label


def test_large_gemv_weight_dequantizes_in_slices(vector_target):
    """Prefill on a weight over a million entries dequantizes 64-row slices from the gemv layout."""
    codes, scale, zero = random_weight(56 * 64 + 48, 576, seed=6)
    q = GemvInt4Weight(codes, scale, zero)
    x = torch.randn(GEMV_MAX_ROWS + 1, 576).to(torch.bfloat16)
    assert_close_to_product_loose(q.linear(x), x, weight_of(codes, scale, zero), "sliced")


def test_platform_int4_formats():
    """The CPU platform gives bf16 models the kernel's format where it runs, float32 models
    the portable one; without the kernels (cpu_kernels off) every 4-bit weight is portable."""
    codes, scale, zero = random_weight(64, 64, seed=7)
    blocks = Int4Blocks(codes, scale, zero, 32)
    with_kernels = resolve_platform(EngineConfig(device="cpu")).layer_ops(torch.bfloat16)
    if cpu_kernels.instruction_set() != "scalar":
        assert isinstance(with_kernels.int4_weight(blocks, torch.bfloat16), GemvInt4Weight)
        assert isinstance(with_kernels.int4_weight(blocks, torch.float32), Int4Weight)
    without = resolve_platform(EngineConfig(device="cpu", cpu_kernels=False)).layer_ops(torch.bfloat16)
    assert without.int4_weight is None and without.name == "native"


def test_portable_layouts():
    """bf16 and float32 weights on CPU tensors keep torch's layout and its fused op."""
    codes, scale, zero = random_weight(64, 64, seed=7)
    blocks = Int4Blocks(codes, scale, zero, 32)
    for dtype in (torch.bfloat16, torch.float32):
        q = Int4Weight(blocks, dtype)
        assert q.layout == "torch" and not hasattr(q, "weight_spec")
        assert torch.equal(q.codes_t().t(), codes)
        x = torch.randn(3, 64).to(dtype)
        assert_close_to_product_loose(q.linear(x), x, blocks.dequantize(), f"torch layout {dtype}")
    assert Int4Weight(blocks, torch.bfloat16, fused=False).layout == "plain"
    with pytest.raises(ValueError, match="layout"):
        Int4Weight(blocks, torch.bfloat16, layout="blocked")


@pytest.mark.parametrize(("n", "k"), [(960, 576), (200, 96), (40, 64)])
def test_dequantize_int4_t_slices(n, k, vector_target):
    """The prefill path's dequantization: rows row_begin.. of W transposed, exactly the blocks'
    weight (float32: (code - 8) * scale + zero rounded once; bf16: that rounded to bf16)."""
    codes, scale, zero = random_weight(n, k, seed=8)
    packed = pack_gemv(codes, scale, zero)
    weight = Int4Blocks(codes, scale, zero, 32).dequantize()
    for start, end in [
        (0, n),
        (16, n),
        (0, min(n, 24)),
        (min(n, 32) // 16 * 16, min(n, 64)),
        (n // 64 * 64, n),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            out = torch.empty(k, end - start, dtype=dtype)
            cpu_kernels.op("dequantize_int4_t")(out, packed, start)
            assert torch.equal(out, weight[start:end].t().to(dtype)), (start, end, dtype)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        cpu_kernels.op("dequantize_int4_t")(torch.empty(k, 8), packed, 8)
    with pytest.raises(RuntimeError, match="layout"):
        cpu_kernels.op("dequantize_int4_t")(torch.empty(k, n + 16), packed, 0)


# Groups of 64 and 128: last super-blocks of 1..4 blocks, a padded block, K of one group, and
# the 1B Llama's shapes cut to a few blocks.
GROUP_SHAPES = [(64, 128, 64), (200, 256, 64), (40, 64, 64), (1000, 384, 128), (16, 128, 128),
                (112, 2048, 128), (48, 8192, 64), (96, 2048, 128)]  # fmt: skip


@pytest.mark.parametrize(("n", "k", "group"), GROUP_SHAPES)
def test_larger_groups_pack_multiply_and_dequantize_exactly(n, k, group, vector_target):
    """Groups of 64 and 128 (one (scale, zero) per 64 or 128 values of k): the layout round-trips,
    its size is what the header says, the vector kernel meets the float64 product's bounds for
    every row count, the dispatching entry point gives one kernel's result, and the prefill
    path's dequantization is exactly the blocks' weight."""
    codes, scale, zero = random_weight(n, k, seed=n + k + group, group=group)
    packed = pack_gemv(codes, scale, zero)
    blocks = -(-n // 16)
    assert packed.shape == (blocks * (8 * k + 64 * k // group),)
    codes_t, scale_zero = unpack_gemv(packed, n, k, group)
    assert torch.equal(codes_t, codes.t())
    assert torch.equal(scale_zero.float(), torch.stack([scale, zero], -1).transpose(0, 1))
    weight = weight_of(codes, scale, zero)
    gen = torch.Generator().manual_seed(9)
    for rows in (1, 3, 4, 5, 9, 17, 65):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        out = run_forced("vector", x, packed, n)
        assert_close_to_product(out, x, weight, f"{n}x{k} group {group}, {rows} rows")
        assert_from_a_kernel(run_kernel(x, packed, n), x, packed, n, f"dispatch, {rows} rows")
    start = n // 2 // 16 * 16
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.empty(k, n - start, dtype=dtype)
        cpu_kernels.op("dequantize_int4_t")(out, packed, start, group)
        assert torch.equal(out, weight[start:].t().to(dtype)), dtype
    q = GemvInt4Weight(codes, scale, zero)
    assert q.group_size == group and q.nbytes == packed.nbytes
    assert torch.equal(q.dequantize(torch.float32), weight.float())


def test_group_sizes_the_kernels_do_not_take_are_refused(vector_target):
    """A group of 256 (or one that does not divide K) has no packed layout, and a wrong group
    size given to the dequantization is refused rather than read as another layout."""
    codes, scale, zero = random_weight(32, 512, group=256)
    with pytest.raises(ValueError, match="groups of 32, 64, 128"):
        GemvInt4Weight(codes, scale, zero)
    codes, scale, zero = random_weight(32, 256, group=64)
    packed = pack_gemv(codes, scale, zero)
    with pytest.raises(RuntimeError, match="layout"):
        cpu_kernels.op("dequantize_int4_t")(torch.empty(256, 32), packed, 0, 32)
    with pytest.raises(RuntimeError, match="group size"):
        cpu_kernels.op("dequantize_int4_t")(torch.empty(256, 32), packed, 0, 48)

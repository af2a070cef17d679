"""The int8 skinny matmul kernel (torch.ops.pagedllm.gemv_int8), its packed layout, and
GemvInt8Weight against the portable Int8Weight (torch's int8 op and dequantize + matmul).

The AVX-512 build multiplies x rounded to 16-bit integers per group of 32 values (exact within
2^7 of the group's largest |x|, else off by at most 2^-16 of it) by the codes, exactly in int32
per group, then scales each group's sum into float32; the AVX2 build, run by every kernel test
too (`vector_target`), multiplies float32 x by the codes as float32 exactly and accumulates in
float32. Against a float64 product with the dequantized weight their errors are therefore the
output's bf16 rounding (allowed: one ulp), float32 rounding of sums whose terms reach 127 |x|
per value of k, and x's rounding (allowed together, with room: 2e-6 * 530 * sum |x| * scale,
i.e. about 1e-3 of sum |x| |w| at the codes' full range).
"""

from __future__ import annotations

import pytest
import torch

from pagedllm.model.layers.quantization import Int8Weight
from pagedllm.ops import cpu_kernels
from pagedllm.ops.int8_gemv import GEMV_MAX_ROWS, GemvInt8Weight, pack_gemv_int8


@pytest.fixture
def vector_target(kernel_target):
    """Runs a kernel test on each build whose gemv_int8 has vector paths (AVX512-BF16, AVX2)."""
    if kernel_target == "scalar":
        pytest.skip("gemv_int8 needs AVX512-BF16 or AVX2 + FMA")
    return kernel_target


# SmolLM2-135M's projections and shapes with tails (a padded block, one block, last
# super-blocks of 1..3 blocks, a K of one group), as the 4-bit kernel's tests use.
SHAPES = [
    (960, 576),
    (576, 576),
    (3072, 576),
    (576, 1536),
    (40, 64),
    (16, 32),
    (200, 96),
    (1000, 128),
    (8, 32),
]
ROWS = [1, 2, 3, 4, 5, 8, 9, 17, 64, 65, 130]


def random_weight(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """codes int8 [N, K] in -127..127 and per-row scales [N] (bf16-representable)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, generator=gen) * 0.02 + 0.001).to(torch.bfloat16)
    return codes, scale


def assert_close_to_product(out, x, codes, scale, label: str) -> None:
    weight = codes.double() * scale.double().unsqueeze(1)
    expected = x.double() @ weight.t()
    accumulation = 2e-6 * 530 * (x.double().abs().sum(1, keepdim=True) * scale.double().unsqueeze(0))
    bound = expected.abs() * 2.0**-8 + accumulation
    excess = (out.double() - expected).abs() - bound
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape, label
    assert (excess <= 0).all(), f"{label}: {int((excess > 0).sum())} outputs off, worst by {excess.max():.3g}"


def run_kernel(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    cpu_kernels.op("gemv_int8")(out, x, packed)
    return out


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_pack_layout_bytes(n, k):
    """Size, and the documented positions of one row's scale and of a pair's two codes."""
    codes, scale = random_weight(n, k, seed=1)
    packed = pack_gemv_int8(codes, scale)
    blocks, groups = -(-n // 16), k // 32
    assert packed.dtype == torch.uint8 and packed.numel() == blocks * 16 * (k + 4)
    nb = min(blocks, 4)  # the first super-block
    block, row, g, line, pair = min(1, nb - 1), 3, groups - 1, 2, 1
    n_idx = block * 16 + row  # < n for every shape here
    scales = packed[: nb * 64].view(torch.float32).view(nb, 16)
    assert scales[block, row].item() == scale[n_idx].float().item()
    # [group, line, block, pair, row, value]
    chunk = packed[nb * 64 : nb * 64 + groups * nb * 512].view(groups, 4, nb, 4, 16, 2)
    k0 = 32 * g + 8 * line + 2 * pair
    got = chunk[g, line, block, pair, row].view(torch.int8)
    assert got.tolist() == codes[n_idx, k0 : k0 + 2].tolist()


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_gemv_int8_matches_float_product(n, k, vector_target):
    codes, scale = random_weight(n, k, seed=n + k)
    packed = pack_gemv_int8(codes, scale)
    gen = torch.Generator().manual_seed(1)
    for rows in ROWS:
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        assert_close_to_product(run_kernel(x, packed, n), x, codes, scale, f"{n}x{k}, {rows} rows")


def test_gemv_int8_exact_on_integers(vector_target):
    """Small integer x and scales: every product and sum is exact in float32, so the output is
    the exact product rounded once to bf16."""
    gen = torch.Generator().manual_seed(2)
    n, k = 48, 96
    codes = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.randint(1, 4, (n,), generator=gen).float()
    packed = pack_gemv_int8(codes, scale)
    x = torch.randint(-2, 3, (5, k), generator=gen).to(torch.bfloat16)
    expected = x.double() @ (codes.double() * scale.double().unsqueeze(1)).t()
    assert torch.equal(run_kernel(x, packed, n), expected.to(torch.bfloat16))


def test_gemv_int8_strided_rows_and_output(vector_target):
    n, k = 80, 128
    codes, scale = random_weight(n, k, seed=3)
    packed = pack_gemv_int8(codes, scale)
    x = torch.randn(6, k + 64).to(torch.bfloat16)[:, 32 : 32 + k]
    wide_out = torch.zeros(6, n + 16, dtype=torch.bfloat16)
    cpu_kernels.op("gemv_int8")(wide_out[:, 8 : 8 + n], x, packed)
    assert_close_to_product(wide_out[:, 8 : 8 + n], x, codes, scale, "strided")
    assert (wide_out[:, :8] == 0).all() and (wide_out[:, 8 + n :] == 0).all()


@pytest.mark.parametrize(("n", "k"), [(960, 576), (200, 96), (40, 64)])
def test_dequantize_int8_t_is_exact(n, k, vector_target):
    codes, scale = random_weight(n, k, seed=4)
    weight = GemvInt8Weight(codes, scale)
    expected = codes.float() * scale.float().unsqueeze(1)
    assert torch.equal(weight.dequantize(torch.float32), expected)
    assert torch.equal(weight.dequantize(torch.bfloat16), expected.to(torch.bfloat16))
    rows_t = torch.empty(k, 20, dtype=torch.float32)  # rows 16..36: one whole block, part of one
    cpu_kernels.op("dequantize_int8_t")(rows_t, weight.packed, 16)
    assert torch.equal(rows_t, expected[16:36].t())


@pytest.mark.parametrize("rows", [1, 7, 64, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1, 300])
def test_linear_matches_the_torch_int8_reference(rows, vector_target):
    """GemvInt8Weight.linear (the kernel up to GEMV_MAX_ROWS rows, dequantize + matmul beyond)
    against the portable Int8Weight on the same rounding of the same float weight: torch's fused
    int8 op for few rows, dequantize + matmul for many."""
    gen = torch.Generator().manual_seed(rows)
    weight = (torch.randn(576, 1536, generator=gen) * 0.05).to(torch.bfloat16)
    reference = Int8Weight.from_float(weight)
    ours = GemvInt8Weight(reference.qweight, reference.scale)
    x = torch.randn(rows, 1536, generator=gen).to(torch.bfloat16)
    bias = torch.randn(576, generator=gen).to(torch.bfloat16)
    got, want = ours.linear(x, bias), reference.linear(x, bias)
    assert got.dtype == want.dtype == torch.bfloat16
    w = reference.dequantize(torch.float64)
    exact = x.double() @ w.t() + bias.double()
    magnitude = x.double().abs() @ w.abs().t() + bias.double().abs()
    # Both end in bf16 (the product, then the bias added): within 2^-9 of sum |x| |w| + |bias|
    # everywhere, a bf16 ulp or so typically.
    for label, out in (("ours", got), ("torch", want)):
        error = (out.double() - exact).abs()
        assert (error / magnitude).max() < 2.0**-9, f"{label}: {(error / magnitude).max():.3g}"
        assert (error / exact.abs().clamp_min(1e-9)).median() < 2.0**-7, label
    if rows <= 32:
        # Against torch's fused int8 op: the same bf16 results but for a few in a thousand,
        # which the bias then moves alike (on the AVX-512 build, which rounds x to 16 bits per
        # group of 32: 19 of 18432 at 32 rows, 7 of them more than one ulp apart where the bias
        # cancels the product to near zero; none on the AVX2 build). How far apart they may be
        # is the bound above.
        assert (got != want).double().mean() < 5e-3
    assert ours.nbytes == 576 * (1536 + 4)


@pytest.mark.parametrize(("n", "k"), [(1000, 128), (200, 96), (16, 32)])
def test_embed_gathers_the_rows_it_is_asked(n, k):
    """A tied embedding reads rows straight from the layout (no kernel needed): code * scale."""
    codes, scale = random_weight(n, k, seed=5)
    weight = GemvInt8Weight(codes, scale)
    ids = torch.tensor([[0, n - 1, 17], [n // 2, 3, 0]]) % n
    expected = (codes.float() * scale.float().unsqueeze(1))[ids].to(torch.bfloat16)
    assert torch.equal(weight.embed(ids), expected)


def _tile_kernel_or_skip() -> None:
    if not cpu_kernels.amx_tiles():
        pytest.skip("the build has no AMX tile kernels, or the OS did not grant the tile state")


def run_forced(kernel: str, x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(x.shape[0], n, dtype=torch.bfloat16)
    cpu_kernels.op("gemv_int8_kernel")(out, x, packed, kernel)
    return out


# Weights the tile path takes (N % 16 == 0), with last super-blocks of 2 and 3 blocks (strips
# of two blocks and of one).
TILE_SHAPES = [shape for shape in SHAPES if shape[0] % 16 == 0] + [(96, 64), (112, 96)]


@pytest.mark.parametrize(("n", "k"), TILE_SHAPES)
def test_each_kernel_matches_float_product(n, k):
    """The native build's two int8 paths forced one at a time: the fused vector products and,
    on AMX CPUs, codes converted a group at a time into bf16 tiles for strips of 32 columns
    (1 or 2 x tiles, 1 or 2 weight tiles, zero-padded last row blocks, further row blocks from
    the strip's converted tiles)."""
    if cpu_kernels.instruction_set() == "scalar":
        pytest.skip("gemv_int8 needs AVX512-BF16 or AVX2 + FMA")
    codes, scale = random_weight(n, k, seed=n * k)
    packed = pack_gemv_int8(codes, scale)
    gen = torch.Generator().manual_seed(5)
    kernels = ["vector"] + (["amx"] if cpu_kernels.amx_tiles() else [])
    for rows in (1, 16, 17, 33, 64, 65, 130):
        x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
        for kernel in kernels:
            out = run_forced(kernel, x, packed, n)
            assert_close_to_product(out, x, codes, scale, f"{kernel} {n}x{k}, {rows} rows")


def test_tile_kernel_exact_on_integers():
    """As test_gemv_int8_exact_on_integers, on the tiles: exact products and sums, one rounding."""
    _tile_kernel_or_skip()
    gen = torch.Generator().manual_seed(6)
    n, k = 80, 96
    codes = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.randint(1, 4, (n,), generator=gen).float()
    packed = pack_gemv_int8(codes, scale)
    for rows in (3, 40):
        x = torch.randint(-2, 3, (rows, k), generator=gen).to(torch.bfloat16)
        expected = x.double() @ (codes.double() * scale.double().unsqueeze(1)).t()
        assert torch.equal(run_forced("amx", x, packed, n), expected.to(torch.bfloat16))
        assert torch.equal(run_kernel(x, packed, n), expected.to(torch.bfloat16))  # the dispatch


def test_forcing_a_kernel_that_cannot_run_says_why():
    if cpu_kernels.instruction_set() == "scalar":
        pytest.skip("gemv_int8 needs AVX512-BF16 or AVX2 + FMA")
    codes, scale = random_weight(40, 64, seed=7)
    packed = pack_gemv_int8(codes, scale)
    x = torch.zeros(20, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="must be 'vector' or 'amx'"):
        run_forced("tiles", x, packed, 40)
    with pytest.raises(RuntimeError, match="N % 16 != 0"):  # 40 rows: no whole last block
        run_forced("amx", x, packed, 40)
    # The dispatch falls back to the vector kernel for such a weight.
    assert_close_to_product(run_kernel(x, packed, 40), x, codes, scale, "40 rows")


def test_gemv_int8_groups_of_zeros_tiny_values_and_nan(vector_target):
    """The AVX-512 build rounds x per group of 32 with a power-of-two step: an all-zero group,
    a row of values near float32's smallest normal, and a NaN (which must poison its row's
    outputs, as in a float product, and no other row's) all take their own branch."""
    n, k = 48, 96
    codes, scale = random_weight(n, k, seed=11)
    packed = pack_gemv_int8(codes, scale)
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(12)).to(torch.bfloat16)
    x[0, 32:64] = 0  # one group of zeros
    x[1] = (x[1].float() * 2.0**-110).to(torch.bfloat16)  # steps clamped at the smallest normal
    x[3, 40] = float("nan")
    out = run_kernel(x, packed, n)
    assert_close_to_product(out[:3], x[:3], codes, scale, "zeros and tiny values")
    assert out[3].isnan().all()

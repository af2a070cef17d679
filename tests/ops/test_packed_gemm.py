"""The packed bf16 matmul (csrc/gemm_bf16.cpp), in each kernel build, against float64 matmuls of
the same bf16 values."""

from __future__ import annotations

import pytest
import torch

from pagedllm.ops import cpu_kernels
from pagedllm.ops.packed_linear import PackedBF16Weight, packable

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels could not be built")


@pytest.fixture
def vector_build(kernel_target):
    """The kernel build under test (`kernel_target`), skipped where it has no vector paths."""
    if kernel_target == "scalar":
        pytest.skip("the packed matmul needs AVX512-BF16 or AVX2")
    return kernel_target


def _weight(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16)


def _check(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    ref = x.double() @ w.double().t()
    # float32 accumulation of exact bf16 products (AVX512-BF16 dot products, or FMA on widened
    # values in the AVX2 build), rounded once to bf16: within a bf16 ulp or two of the exact
    # result, plus float32 summation noise for entries near zero. Both builds meet this bound.
    tol = 2**-7 * ref.abs() + 1e-5 * (x.double().abs() @ w.double().abs().t())
    err = (out.float() - ref).abs()
    assert bool((err <= tol).all()), f"max error {float(err.max())} for shape {tuple(out.shape)}"


@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (3072, 576), (80, 64), (48, 32), (16, 96)])
@pytest.mark.parametrize("m", [1, 2, 5, 6, 7, 13, 64, 130, 385])
def test_matches_float64_reference(vector_build, n, k, m):
    w = _weight(n, k, seed=n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    packed = PackedBF16Weight(w)
    _check(packed.linear(x), x, w)


def test_dequantize_gives_the_weight_back_and_size_is_unchanged(vector_build):
    for n, k in [(960, 576), (80, 64), (16, 32)]:
        w = _weight(n, k, seed=1)
        packed = PackedBF16Weight(w)
        assert torch.equal(packed.dequantize(), w)
        assert torch.equal(cpu_kernels.op("unpack_weight_bf16")(packed.packed), w)
        assert packed.nbytes == w.nbytes
        assert not torch.equal(packed.packed, w)  # the layout really differs


def test_rows_do_not_depend_on_the_batch(vector_build):
    """Each output row is summed in one fixed order whatever else is in the batch."""
    w = _weight(576, 576, seed=2)
    packed = PackedBF16Weight(w)
    x = torch.randn(200, 576, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    full = packed.linear(x)
    for rows in (slice(0, 1), slice(7, 8), slice(10, 47), slice(150, 200), slice(199, 200)):
        assert torch.equal(packed.linear(x[rows]), full[rows])


def test_strided_rows_bias_and_3d_input(vector_build):
    w = _weight(96, 64, seed=4)
    packed = PackedBF16Weight(w)
    base = torch.randn(9, 128, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    x = base[:, 32:96]  # row stride 128: a view, not a copy
    bias = torch.randn(96).to(torch.bfloat16)
    plain = packed.linear(x)
    _check(plain, x, w)
    assert torch.equal(packed.linear(x, bias), plain + bias)
    x3 = x.contiguous().view(3, 3, 64)
    assert torch.equal(packed.linear(x3).view(9, 96), packed.linear(x.contiguous()))


def test_shapes_the_kernel_cannot_take_are_not_packed(vector_build):
    assert not packable(torch.zeros(100, 64, dtype=torch.bfloat16))  # N % 16
    assert not packable(torch.zeros(64, 48, dtype=torch.bfloat16))  # K % 32
    assert not packable(torch.zeros(64, 64, dtype=torch.float32))
    with pytest.raises(ValueError, match="cannot pack"):
        PackedBF16Weight(torch.zeros(100, 64, dtype=torch.bfloat16))


def test_embedding_rows_from_the_packed_table(vector_build):
    for n, k in [(49152 // 16, 576), (80, 64)]:
        w = _weight(n, k, seed=6)
        packed = PackedBF16Weight(w)
        ids = torch.tensor([[0, n - 1, 63, 64], [65, n // 2, 17, 0]])
        assert torch.equal(packed.embed(ids), w[ids])
        with pytest.raises(RuntimeError, match="outside"):
            packed.embed(torch.tensor([1, n]))


def _tile_kernel_or_skip() -> None:
    if not cpu_kernels.amx_tiles():
        pytest.skip("the build has no AMX tile kernel, or the OS did not grant the tile state")


def _through(kernel: str, x: torch.Tensor, packed: PackedBF16Weight) -> torch.Tensor:
    out = torch.empty((x.shape[0], packed.out_features), dtype=torch.bfloat16)
    cpu_kernels.op("gemm_packed_bf16_kernel")(out, x, packed.packed, kernel)
    return out


@pytest.mark.parametrize("n,k", [(960, 576), (576, 1536), (80, 64), (48, 32), (16, 96)])
@pytest.mark.parametrize("m", [1, 3, 16, 17, 32, 33, 63, 64, 65, 100, 193, 385])
def test_each_kernel_matches_float64_reference(n, k, m):
    """The native build's kernels forced one at a time on the same packed weight: the vdpbf16ps
    register tiles, torch's matmul on the weight unpacked (prefill on AMX CPUs) and, on AMX
    CPUs, the tile kernel (its 1 x 4 blocks up to 16 rows, 2 x 2 blocks from 17, zero-padded
    last blocks, groups of one to four 16-column panels)."""
    if cpu_kernels.instruction_set() == "scalar":
        pytest.skip("the packed matmul needs AVX512-BF16 or AVX2")
    w = _weight(n, k, seed=n * k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m + 1)).to(torch.bfloat16)
    packed = PackedBF16Weight(w)
    _check(_through("vector", x, packed), x, w)
    _check(_through("onednn", x, packed), x, w)
    _tile_kernel_or_skip()
    tiles = _through("amx", x, packed)
    _check(tiles, x, w)
    assert torch.equal(packed.linear(x), tiles)  # what the dispatch picks on this CPU


def test_prefill_sized_batches_on_amx_match_the_reference():
    """From 1024 rows (kAmxOneDnnMinRows) the dispatch unpacks the weight for torch's matmul."""
    _tile_kernel_or_skip()
    w = _weight(96, 64, seed=10)
    x = torch.randn(1030, 64, generator=torch.Generator().manual_seed(11)).to(torch.bfloat16)
    packed = PackedBF16Weight(w)
    out = packed.linear(x)
    _check(out, x, w)
    assert torch.equal(out, _through("onednn", x, packed))


def test_tile_kernel_rows_do_not_depend_on_the_batch():
    _tile_kernel_or_skip()
    w = _weight(1024, 576, seed=7)
    packed = PackedBF16Weight(w)
    x = torch.randn(300, 576, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    full = _through("amx", x, packed)
    for rows in (slice(0, 1), slice(5, 21), slice(40, 104), slice(150, 300)):
        assert torch.equal(_through("amx", x[rows].contiguous(), packed), full[rows])


def test_forcing_a_kernel_that_is_not_there_says_so():
    packed = PackedBF16Weight(_weight(16, 32, seed=9))
    x = torch.zeros(1, 32, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="must be 'vector', 'amx' or 'onednn'"):
        _through("sse", x, packed)
    if not cpu_kernels.amx_tiles():
        with pytest.raises(RuntimeError, match="no AMX kernel in this build"):
            _through("amx", x, packed)

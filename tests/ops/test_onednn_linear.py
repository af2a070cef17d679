"""bf16 weights packed once for oneDNN's matmul (OneDnnBF16Weight) against torch's F.linear on
the same weight and a float64 product."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.ops.onednn_linear import OneDnnBF16Weight, onednn_available, pack_for_onednn

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch has no oneDNN bf16 matmul on this CPU")


@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (200, 96), (40, 64)])
@pytest.mark.parametrize("rows", [1, 2, 5, 32, 130])
def test_linear_matches_a_float64_product(n, k, rows):
    gen = torch.Generator().manual_seed(n + k + rows)
    weight = (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    packed = OneDnnBF16Weight(weight)
    exact = x.double() @ weight.double().t()
    magnitude = x.double().abs() @ weight.double().abs().t()
    for got, want, label in (
        (packed.linear(x), exact, "no bias"),
        (packed.linear(x, bias), exact + bias.double(), "bias"),
    ):
        assert got.dtype == torch.bfloat16 and got.shape == (rows, n), label
        # float32 sums rounded once to bf16 (and once more with the bias added).
        error = (got.double() - want).abs()
        assert (error <= want.abs() * 2.0**-7 + magnitude * 1e-5 + bias.double().abs() * 2.0**-8).all(), label
    # torch's own matmul on the plain weight: the same results but for rare last-bit differences.
    ulps = (packed.linear(x).view(torch.int16).int() - F.linear(x, weight).view(torch.int16).int()).abs()
    assert ulps.max() <= 1 and (ulps > 0).double().mean() < 1e-2


def test_shapes_dtypes_and_dequantize():
    weight = torch.randn(48, 64).to(torch.bfloat16)
    packed = pack_for_onednn(weight)
    assert isinstance(packed, OneDnnBF16Weight) and packed.nbytes == weight.nbytes
    assert torch.equal(packed.dequantize(), weight)
    assert torch.equal(packed.dequantize(torch.float32), weight.float())
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    assert torch.equal(packed.linear(x), packed.linear(x.reshape(6, 64)).reshape(2, 3, 48))
    strided = torch.randn(5, 128).to(torch.bfloat16)[:, ::2]
    assert torch.equal(packed.linear(strided), packed.linear(strided.contiguous()))
    # Activations in float32 run on the dequantized weight.
    x32 = torch.randn(4, 64)
    torch.testing.assert_close(packed.linear(x32), F.linear(x32, weight.float()))
    # Only bf16 matrices are packed.
    assert pack_for_onednn(torch.randn(48, 64)) is None
    assert pack_for_onednn(torch.randn(64).to(torch.bfloat16)) is None

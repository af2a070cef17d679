"""The skinny bf16 matmul on plain weights (gemv_bf16, csrc/gemm_bf16.cpp), in each kernel build,
against float64 matmuls of the same bf16 values."""

from __future__ import annotations

import pytest
import torch

from pagedllm.ops import cpu_kernels
from pagedllm.ops.linear import (
    AMX_SKINNY_MAX_ROWS,
    SKINNY_MAX_ROWS,
    gemv_bf16,
    skinny_linear,
    skinny_linear_upto,
)

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels could not be built")


@pytest.fixture
def vector_build(kernel_target):
    """The kernel build under test (`kernel_target`), skipped where it has no vector paths."""
    if kernel_target == "scalar":
        pytest.skip("gemv_bf16 needs AVX512-BF16 or AVX2")
    return kernel_target


def _assert_close_to_exact(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    # Products are exact in float32 in both builds (bf16 dot products, or FMA on widened
    # values); only the float32 summation order and the final bf16 rounding differ.
    expected = x.double() @ weight.double().T
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=8e-3)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 32, 66, 256])
@pytest.mark.parametrize("shape", [(960, 576), (577, 1536), (3, 64), (130, 96)])
def test_gemv_bf16_matches_float64_matmul(vector_build, rows, shape):
    torch.manual_seed(0)
    n, k = shape
    x, weight = torch.randn(rows, k).bfloat16(), torch.randn(n, k).bfloat16()
    out = torch.empty(rows, n, dtype=torch.bfloat16)
    gemv_bf16(out, x, weight)
    _assert_close_to_exact(out, x, weight)


def test_strided_rows_and_rows_independent_of_the_batch(vector_build):
    torch.manual_seed(1)
    weight = torch.randn(200, 128).bfloat16()
    base = torch.randn(11, 192).bfloat16()
    x = base[:, 32:160]  # row stride 192: a view, not a copy
    out = torch.empty(11, 200, dtype=torch.bfloat16)
    gemv_bf16(out, x, weight)
    _assert_close_to_exact(out, x, weight)
    # Each output is summed in one fixed order whatever the other rows of x are.
    for rows in (slice(0, 1), slice(4, 8), slice(8, 11), slice(10, 11)):
        part = torch.empty(rows.stop - rows.start, 200, dtype=torch.bfloat16)
        gemv_bf16(part, x[rows], weight)
        assert torch.equal(part, out[rows])


def test_row_limit_and_skinny_linear(vector_build):
    """The build reports the kernel (the platform and the compiled stack rely on it), and
    skinny_linear gives F.linear's result within the kernel's bound on both sides of its limit."""
    assert cpu_kernels.op("gemv_bf16_max_rows")() == 256 >= SKINNY_MAX_ROWS
    torch.manual_seed(2)
    weight, bias = torch.randn(96, 64).bfloat16(), torch.randn(96).bfloat16()
    for limit in (SKINNY_MAX_ROWS, AMX_SKINNY_MAX_ROWS):
        linear = skinny_linear_upto(limit)
        assert linear.skinny_max_rows == limit
        for rows in (1, limit, limit + 1):
            x = torch.randn(rows, 64).bfloat16()
            expected = (x.double() @ weight.double().T + bias.double()).float()
            torch.testing.assert_close(linear(x, weight, bias).float(), expected, atol=3e-2, rtol=1.6e-2)
            torch.testing.assert_close(skinny_linear(x, weight, bias, limit), linear(x, weight, bias))


def test_shapes_the_kernel_cannot_take_raise(vector_build):
    op = cpu_kernels.op("gemv_bf16")
    with pytest.raises(RuntimeError, match="K % 32"):
        op(
            torch.empty(1, 8, dtype=torch.bfloat16),
            torch.zeros(1, 48, dtype=torch.bfloat16),
            torch.zeros(8, 48, dtype=torch.bfloat16),
        )
    with pytest.raises(RuntimeError, match="M <= 256"):
        op(
            torch.empty(257, 8, dtype=torch.bfloat16),
            torch.zeros(257, 32, dtype=torch.bfloat16),
            torch.zeros(8, 32, dtype=torch.bfloat16),
        )

"""The compiled element-wise CPU kernels against the eager torch code they replace (each
test on the build for this CPU and on the AVX2 build).

The kernels round intermediates to the activation dtype where the eager code does, so the
RMSNorm and rotary results must agree to the last bit (float32 up to summation order);
SiLU uses its own exp, within an ulp of the activation dtype.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagedllm.ops import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels could not be built")
ops = torch.ops.pagedllm if cpu_kernels.available() else None
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def eager_rms_norm(x, weight, eps):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def tolerance(dtype):
    return {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_fused_add(dtype, kernel_target):
    torch.manual_seed(0)
    x, residual = torch.randn(37, 576).to(dtype), torch.randn(37, 576).to(dtype)
    weight = (torch.rand(576) + 0.5).to(dtype)
    out = torch.empty_like(x)
    cpu_kernels.op("rms_norm")(out, x, weight, 1e-5)
    # bf16 rounding of x / rms may land on the other side of a tie: allow one ulp.
    close = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0, "rtol": 1e-2}
    torch.testing.assert_close(out, eager_rms_norm(x, weight, 1e-5), **close)

    expected_residual = x + residual
    expected = eager_rms_norm(expected_residual, weight, 1e-5)
    x2, r2 = x.clone(), residual.clone()
    cpu_kernels.op("fused_add_rms_norm")(x2, r2, weight, 1e-5)
    torch.testing.assert_close(r2, expected_residual, atol=0, rtol=0)
    torch.testing.assert_close(x2, expected, **close)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype, kernel_target):
    torch.manual_seed(0)
    x = (torch.randn(29, 2 * 1536) * 4).to(dtype)
    out = torch.empty(29, 1536, dtype=dtype)
    cpu_kernels.op("silu_and_mul")(out, x)
    gate, up = x.chunk(2, dim=-1)
    close = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 1e-2}
    torch.testing.assert_close(out, F.silu(gate) * up, **close)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary_dim", [64, 32])
def test_rotary_embedding_in_place_on_strided_rows(dtype, rotary_dim, kernel_target):
    torch.manual_seed(0)
    head_dim, heads, tokens = 64, 12, 23
    angles = torch.arange(100, dtype=torch.float32)[:, None] * torch.rand(rotary_dim // 2)[None, :]
    table = torch.cat([angles.cos(), angles.sin()], dim=-1)
    qkv = torch.randn(tokens, (heads + 3) * head_dim).to(dtype)
    positions = torch.randint(0, 100, (tokens,))
    qk = qkv[:, : heads * head_dim]  # a strided view, rotated in place
    x = qk.clone().view(tokens, heads, head_dim)
    cos, sin = table[positions].chunk(2, dim=-1)
    cos, sin = cos[:, None, :].to(dtype), sin[:, None, :].to(dtype)
    rot, passed = x.split([rotary_dim, head_dim - rotary_dim], dim=-1)
    x1, x2 = rot.chunk(2, dim=-1)
    expected = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, passed], dim=-1).view(tokens, -1)
    untouched = qkv[:, heads * head_dim :].clone()
    cpu_kernels.op("rotary_embedding")(qk, positions, table, head_dim, rotary_dim)
    torch.testing.assert_close(qk, expected, **tolerance(dtype))
    torch.testing.assert_close(qkv[:, heads * head_dim :], untouched, atol=0, rtol=0)


def test_bad_input_raises_a_clear_error():
    x = torch.randn(4, 64)
    with pytest.raises(RuntimeError, match="position out of range"):
        ops.rotary_embedding(x, torch.tensor([0, 1, 2, 500]), torch.randn(100, 64), 64, 64)
    with pytest.raises(RuntimeError, match="int32"):
        ops.paged_attention(
            torch.empty(1, 2, 8),
            torch.randn(1, 2, 8),
            torch.randn(1, 4, 4, 8),
            torch.randn(1, 4, 4, 8),
            torch.zeros(1, 1, dtype=torch.int64),
            torch.tensor([0, 1], dtype=torch.int32),
            torch.tensor([1], dtype=torch.int32),
            1.0,
            0,
            0.0,
            False,
        )

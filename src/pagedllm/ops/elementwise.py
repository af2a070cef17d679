"""CPU implementations of the element-wise layers (csrc/elementwise.cpp), bound once per layer.

Each function here takes a layer (duck-typed: the attributes its docstring names) and returns
the callable that replaces the layer's `forward_native` (or `rotate`) for the model's lifetime,
or None where the kernel cannot serve that layer. The CPU platform binds them after the weights
load (`model/layers/custom_op.py`); the checks left inside are the kernels' preconditions on
each call's tensors (2-D, unit stride, dtype), falling back to the layer's own reference.
The results are the reference's bits: the kernels round to the activation dtype where the
eager code does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pagedllm.ops.cpu_kernels import op


def rms_norm(layer) -> Callable:
    """For a plain RMSNorm (`weight`, `eps`, `forward_native(x, residual=None)`): one pass in
    C++ instead of ~8 eager ops; with a residual, the add and the norm run in place."""
    native, weight, eps = layer.forward_native, layer.weight, layer.eps
    norm, fused_add_norm = op("rms_norm"), op("fused_add_rms_norm")

    def forward(x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.dim() != 2 or x.stride(1) != 1 or x.dtype != weight.dtype:
            return native(x, residual)
        if residual is None:
            out = torch.empty(x.shape, dtype=x.dtype)
            norm(out, x, weight, eps)
            return out
        if not (x.is_contiguous() and residual.is_contiguous()):
            return native(x, residual)
        # In place: x is the block output just computed and residual the running stream;
        # neither is read again by the caller.
        fused_add_norm(x, residual, weight, eps)
        return x, residual

    return forward


def silu_and_mul(layer) -> Callable:
    """For SiluAndMul (`forward_native(x)`): [T, 2d] -> silu(gate) * up [T, d] in one pass."""
    native, kernel = layer.forward_native, op("silu_and_mul")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.stride(1) != 1:
            return native(x)
        out = torch.empty((x.shape[0], x.shape[1] // 2), dtype=x.dtype)
        kernel(out, x)
        return out

    return forward


def rotary_embedding(layer) -> Callable | None:
    """For a full-width rotary embedding (`cos_sin_cache [P, head_dim]` float32, `head_dim`,
    `rotate_native(positions, x)`): rotates x in place and returns it (callers pass slices of
    the projection they just computed and do not read the unrotated values again)."""
    native, cache, head_dim = layer.rotate_native, layer.cos_sin_cache, layer.head_dim
    if cache.shape[1] != head_dim:
        return None
    kernel = op("rotary_embedding")

    def rotate(positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 2
            or x.stride(1) != 1
            or positions.dtype != torch.int64
            or not positions.is_contiguous()
        ):
            return native(positions, x)
        kernel(x, positions, cache, head_dim, head_dim)
        return x

    return rotate

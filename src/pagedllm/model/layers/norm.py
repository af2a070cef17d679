"""RMSNorm computed in float32, as transformers computes Llama's, with a fused residual add."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.model.layers.direct_call import DirectCall
from pagedllm.model.layers.parallel import new_parameter
from pagedllm.ops import cpu_kernels


class RMSNorm(DirectCall, nn.Module):
    """x / rms(x) * weight. `norm(x)` returns the normed tensor; `norm(x, residual)` first adds the
    residual (in the model dtype, like the unfused block does) and returns (normed, new residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = new_parameter(hidden_size)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 so bf16/fp16 activations do not lose the small variances.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self._use_kernel(x, residual):
            ops = torch.ops.pagedllm
            if residual is None:
                out = torch.empty(x.shape, dtype=x.dtype)
                ops.rms_norm(out, x, self.weight, self.eps)
                return out
            # In place: x is the block output just computed and residual the running stream;
            # neither is read again by the caller.
            ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
            return x, residual
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def _use_kernel(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        # One pass in C++ instead of ~8 eager ops; Gemma's variant keeps the torch code.
        return (
            type(self) is RMSNorm
            and x.dim() == 2
            and x.stride(1) == 1
            and x.dtype == self.weight.dtype
            and (residual is None or (x.is_contiguous() and residual.is_contiguous()))
            and cpu_kernels.use_for(x)
        )


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: x / rms(x) * (1 + weight), all in float32, cast back at the end.

    Checkpoints store the weight as an offset from 1. Unlike Llama's, the scale is applied
    before the cast back to the activations' dtype. The fused residual add is the same.
    """

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)

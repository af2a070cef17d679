"""RMSNorm computed in float32, as transformers computes Llama's, with a fused residual add."""

from __future__ import annotations

import torch

from pagedllm.model.layers.custom_op import CustomOp
from pagedllm.model.layers.fusion_spec import NormSpec
from pagedllm.model.layers.parallel import new_parameter


class RMSNorm(CustomOp):
    """x / rms(x) * weight. `norm(x)` returns the normed tensor; `norm(x, residual)` first adds the
    residual (in the model dtype, like the unfused block does) and returns (normed, new residual).

    A platform implementation may compute the add and the norm in place in `x` and `residual`:
    callers pass the block output they just computed and the running stream, and read neither
    again."""

    op_name = "rms_norm"

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = new_parameter(hidden_size)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 so bf16/fp16 activations do not lose the small variances.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward_native(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def fusion_spec(self) -> NormSpec | None:
        """This norm for a step compiler (see fusion_spec.py)."""
        return NormSpec(self.weight, self.eps)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: x / rms(x) * (1 + weight), all in float32, cast back at the end.

    Checkpoints store the weight as an offset from 1. Unlike Llama's, the scale is applied
    before the cast back to the activations' dtype. The fused residual add is the same.
    """

    op_name = "gemma_rms_norm"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)

    def fusion_spec(self) -> None:
        # The (1 + w) scale before the cast back is not the plain RMSNorm a spec describes.
        return None

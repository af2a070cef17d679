"""Gated activations for fused gate/up projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagedllm.model.layers.custom_op import CustomOp


class SiluAndMul(CustomOp):
    """[..., 2d] holding (gate, up) -> silu(gate) * up of shape [..., d]."""

    op_name = "silu_and_mul"

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


# Element-wise activations named as in Hugging Face configs (`activation_function`, `hidden_act`).
_ACTIVATIONS = {
    "gelu": F.gelu,
    # gelu_new and gelu_pytorch_tanh are both the tanh approximation of GELU.
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def get_act_fn(name: str):
    """The element-wise activation a config names; raises with the supported names otherwise."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]

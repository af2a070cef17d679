"""How a weight format describes itself to a step compiler."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """A linear layer's weight as a compiled step takes it.

    `kind`: "plain" (a float [N, K] tensor), "packed_bf16" (ops/packed_linear.py),
    "int4_gemv" (ops/int4_gemv.py), "int8_gemv" (ops/int8_gemv.py) or "onednn_bf16"
    (ops/onednn_linear.py); `tensor`: what the kernel
    reads; `max_rows`: the most rows of x the kernel for this format takes (None: any number).
    """

    kind: str
    tensor: torch.Tensor
    max_rows: int | None = None

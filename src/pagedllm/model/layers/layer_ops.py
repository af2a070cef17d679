"""What a platform hands the model layers: implementations and weight formats, chosen once.

The model never asks which device it runs on. The platform (pagedllm/platforms/) builds one
`LayerOps` at start-up and the loader applies it: weight post-processing turns each float or
4-bit checkpoint weight into the platform's format (`pack_float_weight`, `int8_weight`,
`int4_weight`), plain float weights multiply through `dense_linear`, and `layer_impls` replaces
the reference of element-wise layers (see custom_op.py). `LayerOps()` is the pure-torch
reference everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# (x, weight, bias) -> x @ weight^T + bias
DenseLinear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _keep_float(weight: torch.Tensor) -> nn.Module | None:
    return None


@dataclass(frozen=True)
class LayerOps:
    """Implementations for the model's layers (defaults: the torch reference).

    - `name`: what the log calls this set ("native", "cpu").
    - `dense_linear`: the matmul of plain float weights.
    - `pack_float_weight(weight)`: a platform weight format for a loaded float [N, K] weight
      (an nn.Module with `linear(x, bias=None)`, `embed(ids)` and `dequantize()`), or None to
      keep the weight as it is.
    - `int8_weight(weight)`: the int8 weight format, from a float [N, K] weight (None: the
      portable `Int8Weight.from_float`).
    - `int4_weight(blocks, dtype)`: the 4-bit weight format (None: the portable Int4Weight).
    - `layer_impls`: op name -> factory(layer) -> callable or None (see custom_op.py).
    """

    name: str = "native"
    dense_linear: DenseLinear = F.linear
    pack_float_weight: Callable[[torch.Tensor], nn.Module | None] = _keep_float
    int8_weight: Callable | None = None
    int4_weight: Callable | None = None
    layer_impls: Mapping[str, Callable] = field(default_factory=dict)


NATIVE = LayerOps()

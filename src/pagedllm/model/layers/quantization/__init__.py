"""Weight-only quantization: `--quantization {none,int8,int4,int4-g128}`.

Models are built and loaded as usual (the linear layers' weight loaders shard float weights, or
4-bit checkpoint groups, see int4_blocks.py); `process_weights_after_loading(model, method)`
then replaces each weight by its quantized form, once, and the layers' forwards run the
quantized matmul. Activations stay in the model dtype (bf16 on CPU).

| method | linear layers | LM head | embedding |
| --- | --- | --- | --- |
| int8 | int8, one scale per output row | int8 | int8 rows |
| int4 | 4-bit groups of 32 (scale + zero): 5 bits per weight | int8 | int8 rows |
| int4-g128 | 4-bit groups of 128 (64 or 32 where K is not a multiple of 128): 4.25 bits | int8 | int8 rows |

int4 stores as many bits as GGUF's Q4_1 and int4-g128 fewer than Q4_0 (4.5); groups of 128 are
the usual AWQ / GPTQ choice. Larger groups lose more quality (benchmarks/README.md, "4-bit
groups of 128"). The LM head stays int8 under both: 4-bit groups on it cost more quality than
any other layer (`benchmarks/quant_quality.py`) for a fifth of the bytes a token reads. A tied embedding and LM
head share one int8 weight. A weight whose shape a kernel cannot take (int4: rows not a multiple
of 16 or columns of 32) falls back to int8. MoE expert weights stay in the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.config import QUANTIZATION_METHODS
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.model.layers.quantization import int4
from pagedllm.model.layers.quantization.int4 import Int4Weight
from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks, Int4Staging
from pagedllm.model.layers.quantization.int8 import Int8Weight


@dataclass(frozen=True, slots=True)
class QuantScheme:
    """The format of each kind of weight under one `--quantization` method."""

    linear: str
    lm_head: str
    embedding: str = "int8"
    int4_group_size: int = int4.GROUP_SIZE  # the largest; a weight whose K it does not divide takes less


SCHEMES = {
    "int8": QuantScheme(linear="int8", lm_head="int8"),
    "int4": QuantScheme(linear="int4", lm_head="int8"),
    "int4-g128": QuantScheme(linear="int4", lm_head="int8", int4_group_size=128),
}

# Quantized weights made in one pass, by (id of the float parameter, format): a tied embedding
# and LM head get the same object.
SharedWeights = dict[tuple[int, str], nn.Module]


def scheme_for(method: str | None) -> QuantScheme | None:
    """The scheme of a method name; None for no quantization."""
    if method is None or method == "none":
        return None
    if method not in SCHEMES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_METHODS)}; got {method!r}")
    return SCHEMES[method]


def quantize_weight(
    kind: str,
    param: torch.Tensor,
    staging: Int4Staging | None,
    shared: SharedWeights,
    layer_ops: LayerOps = NATIVE,
    int4_group_size: int = int4.GROUP_SIZE,
) -> nn.Module:
    """The `kind` ("int8" | "int4") form of a float [N, K] weight, plus any 4-bit checkpoint groups,
    in the platform's format where it has one (`LayerOps.int8_weight`, `LayerOps.int4_weight`);
    4-bit groups of `int4_group_size` or the largest smaller one that divides K."""
    weight = param.data
    if kind == "int4" and not int4.supports(*weight.shape):
        kind = "int8"
    key = (id(param), kind)
    if key in shared and staging is None:
        return shared[key]
    if kind == "int4":
        make_int4 = layer_ops.int4_weight or Int4Weight
        group_size = int4.group_size_for(weight.shape[1], int4_group_size)
        quantized = make_int4(_merge_int4(weight, staging, group_size), weight.dtype)
    elif kind == "int8":
        if staging is not None:
            staging.write_into(weight)
        make_int8 = layer_ops.int8_weight or Int8Weight.from_float
        quantized = make_int8(weight)
    else:
        raise ValueError(f"unknown weight format {kind!r}")
    shared[key] = quantized
    return quantized


def _merge_int4(weight: torch.Tensor, staging: Int4Staging | None, group_size: int) -> Int4Blocks:
    """Groups received from the checkpoint as they are; the others quantized from the float weight
    in groups of `group_size` (checkpoint groups of another size go through the float weight)."""
    if staging is not None and staging.group_size != group_size:  # another group size: via floats
        staging.write_into(weight)
        staging = None
    if staging is None:
        return int4.quantize_groups(weight, group_size)
    if bool(staging.loaded.all()):
        return staging.as_blocks()
    blocks = int4.quantize_groups(weight, group_size)
    loaded = staging.loaded
    codes_mask = loaded.repeat_interleave(blocks.group_size, dim=1)
    return Int4Blocks(
        torch.where(codes_mask, staging.codes, blocks.codes),
        torch.where(loaded, staging.scale, blocks.scale),
        torch.where(loaded, staging.zero, blocks.zero),
        blocks.group_size,
    )


@torch.no_grad()
def process_weights_after_loading(model: nn.Module, method: str | None, layer_ops: LayerOps = NATIVE) -> None:
    """Once all weights are loaded: quantize every layer that takes part (or, with no method,
    write any 4-bit checkpoint groups a layer received into its float weight), each weight in
    the formats `layer_ops` (the platform's) gives."""
    scheme = scheme_for(method)
    shared: SharedWeights = {}
    for module in list(model.modules()):
        hook = getattr(module, "process_weights_after_loading", None)
        if hook is not None:
            hook(scheme, shared, layer_ops)


def quantized_nbytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, shared ones counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.nbytes
    return total


__all__ = [
    "QUANTIZATION_METHODS",
    "SCHEMES",
    "Int4Blocks",
    "Int4Staging",
    "Int4Weight",
    "Int8Weight",
    "QuantScheme",
    "process_weights_after_loading",
    "quantize_weight",
    "quantized_nbytes",
    "scheme_for",
]

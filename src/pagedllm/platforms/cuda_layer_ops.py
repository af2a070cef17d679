"""The CUDA platform's layer ops: int8 and 4-bit weights in our Triton kernels' formats.

Float weights keep the native dense matmul (cuBLAS through F.linear) and element-wise layers
their torch reference; only the quantized formats differ from `LayerOps()`: `--quantization
int8` weights become `TritonInt8Weight`s and 4-bit ones `TritonInt4Weight`s
(ops/triton_quant_linear.py), built from the same per-row int8 codes and `Int4Blocks` as the
portable formats, on whatever device the weights are (so the layouts are built and tested on
CPU). Without `triton` installed the portable formats serve (every matmul dequantizes).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from pagedllm.model.layers.layer_ops import LayerOps
from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks
from pagedllm.model.layers.quantization.int8 import Int8Weight
from pagedllm.ops.triton_quant_linear import GROUP_SIZE, TritonInt4Weight, TritonInt8Weight


def cuda_layer_ops(dtype: torch.dtype) -> LayerOps:
    """The layer ops `CudaPlatform.layer_ops(dtype)` hands the loader (the same for every dtype:
    the kernels take bf16, fp16 and float32 activations)."""
    if importlib.util.find_spec("triton") is None:
        return LayerOps(name="cuda")
    return LayerOps(name="cuda", int8_weight=triton_int8_weight, int4_weight=triton_int4_weight)


def triton_int8_weight(weight: torch.Tensor) -> nn.Module:
    """A float [N, K] weight rounded per row to int8 (as `Int8Weight.from_float`), in the kernels' format."""
    portable = Int8Weight.from_float(weight)
    return TritonInt8Weight(portable.qweight, portable.scale)


def triton_int4_weight(blocks: Int4Blocks, dtype: torch.dtype) -> nn.Module:
    """4-bit groups (quantized here or a checkpoint's, taken as they are) in the kernels' format;
    larger groups are split into groups of 32 (exact; the scales then take 32-group bytes)."""
    if blocks.group_size % GROUP_SIZE:
        raise ValueError(f"the Triton 4-bit kernels take groups of {GROUP_SIZE}; got {blocks.group_size}")
    blocks = blocks.regroup(GROUP_SIZE)
    return TritonInt4Weight(blocks.codes, blocks.scale, blocks.zero, dtype)

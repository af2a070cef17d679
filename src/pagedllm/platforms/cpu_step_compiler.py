"""The CPU step compiler: a Llama-family decoder stack as one compiled op call per step.

The Python layers call ~11 kernels per layer; between them the interpreter, nn.Module attribute
lookups and the dispatcher cost a few microseconds each, about 2-3 ms of a 10 ms single-stream
token on a 30-layer model. The op (csrc/decoder_stack.cpp) runs the same kernels in the same
order from C++, so its results are bit-identical to the layers'. It takes what the model
describes as "prenorm_swiglu" layers (model/layers/fusion_spec.py) when every layer has the
same shape, attends with the CPU paged backend, and keeps its weights in a format the op takes
(float, packed bf16, or the compiled 4-bit layout: then only steps up to that kernel's rows).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from pagedllm.attention.backends.base import BLOCKED_BF16
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.fusion_spec import DecoderStackSpec, NormSpec, PreNormSwiGLULayerSpec
from pagedllm.ops.decoder_stack import DecoderStackInfo, decoder_stack, decoder_stack_info
from pagedllm.platforms.step_compiler import CompiledStep, StepCompiler

logger = logging.getLogger(__name__)

_TENSORS_PER_LAYER = 6  # input norm, qkv, o, post-attention norm, gate_up, down


class CpuDecoderStack(CompiledStep):
    """The described stack bound to its tensors: token ids -> final-normed hidden states."""

    name = "cpu_decoder_stack"

    def __init__(self, spec: DecoderStackSpec, weights, kinds, max_rows: int | None, skinny_max_rows: int):
        first = spec.layers[0]
        attn = first.attention
        self.embed = spec.embed
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
        self.scale, self.eps = attn.scale, first.input_norm.eps
        self.intermediate_size = first.intermediate_size
        self.cos_sin_cache = attn.rotary_cos_sin
        self.weights, self.weight_kinds = weights, kinds
        self.kv_caches = [layer.attention.kv_cache for layer in spec.layers]
        self.layer_groups = [layer.attention.kv_group for layer in spec.layers]
        self.windows = [layer.attention.sliding_window or 0 for layer in spec.layers]
        self.blocked_kv = attn.kv_layout.element_order == BLOCKED_BF16
        self.max_rows = max_rows  # None: any number of tokens
        self.skinny_max_rows = skinny_max_rows

    def applies(self, positions: torch.Tensor, md: AttentionMetadata) -> bool:
        tokens = positions.shape[0]
        return (
            tokens == md.num_actual_tokens
            and (self.max_rows is None or tokens <= self.max_rows)
            and positions.dtype == torch.int64
            and positions.is_contiguous()
        )

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        hidden = self.embed(input_ids)
        if not hidden.is_contiguous():
            hidden = hidden.contiguous()
        return decoder_stack(
            hidden,
            positions,
            self.cos_sin_cache,
            self.weights,
            self.weight_kinds,
            self.kv_caches,
            self.layer_groups,
            self.windows,
            md.block_tables,
            md.slot_mappings,
            md.query_start_loc,
            md.seq_lens,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
            self.eps,
            self.scale,
            self.blocked_kv,
            self.skinny_max_rows,
        )


class CpuDecoderStackCompiler(StepCompiler):
    """Compiles models that describe a uniform "prenorm_swiglu" stack; see the module docstring.

    `skinny_max_rows`: up to how many rows the Python layers multiply plain bf16 weights with
    the skinny kernel (ops/linear.py; 0: never); the op is given the same limit."""

    name = "cpu_decoder_stack"

    def __init__(self, skinny_max_rows: int):
        self.skinny_max_rows = skinny_max_rows

    def compile(self, model: nn.Module) -> CpuDecoderStack | None:
        info = decoder_stack_info()
        if info is None:
            logger.info("step compiler: this kernel build has no decoder stack")
            return None
        self._check_library(info)
        describe = getattr(model, "fusion_spec", None)
        spec = None if describe is None else describe()
        if spec is None or spec.kind != "prenorm_swiglu":
            logger.info("step compiler: %s does not describe a prenorm_swiglu stack", type(model).__name__)
            return None
        reason = _unfusable(spec)
        if reason:
            logger.info("step compiler: decoder layers stay in Python (%s)", reason)
            return None
        weights, kinds, max_rows = [], [], None
        for layer in spec.layers:
            for part in (
                layer.input_norm,
                layer.qkv,
                layer.o,
                layer.post_attention_norm,
                layer.gate_up,
                layer.down,
            ):
                if isinstance(part, NormSpec):
                    weights.append(part.weight)
                    kinds.append(info.kinds["plain"])
                    continue
                if part.kind not in info.kinds or not part.tensor.is_contiguous():
                    logger.info("step compiler: a %s weight is not one the op takes", part.kind)
                    return None
                weights.append(part.tensor)
                kinds.append(info.kinds[part.kind])
                if part.max_rows is not None:
                    max_rows = part.max_rows if max_rows is None else min(max_rows, part.max_rows)
        weights.append(spec.final_norm.weight)
        kinds.append(info.kinds["plain"])
        return CpuDecoderStack(spec, weights, kinds, max_rows, self.skinny_max_rows)

    def _check_library(self, info: DecoderStackInfo) -> None:
        if info.tensors_per_layer != _TENSORS_PER_LAYER or info.skinny_max_rows < self.skinny_max_rows:
            raise RuntimeError(
                f"the compiled decoder stack ({info}) disagrees with Python (tensors per layer "
                f"{_TENSORS_PER_LAYER}, skinny rows up to {self.skinny_max_rows}): rebuild the kernels"
            )


def _unfusable(spec: DecoderStackSpec) -> str | None:
    """Why this stack cannot run as the op (None: it can)."""
    first = spec.layers[0]
    if spec.final_norm.eps != first.input_norm.eps:
        return "a final norm with another eps"
    for layer in spec.layers:
        attn = layer.attention
        if not isinstance(attn.backend, CPUPagedBackend):
            return f"attention backend {attn.backend.name}"
        if attn.kv_layout.element_order != first.attention.kv_layout.element_order:
            return "KV caches in different element orders"
        if not _same_shape(layer, first):
            return "layers of different shapes"
    return None


def _same_shape(layer: PreNormSwiGLULayerSpec, first: PreNormSwiGLULayerSpec) -> bool:
    a, b = layer.attention, first.attention
    return (
        (a.num_heads, a.num_kv_heads, a.head_dim, a.scale)
        == (b.num_heads, b.num_kv_heads, b.head_dim, b.scale)
        and a.rotary_cos_sin is b.rotary_cos_sin
        and layer.input_norm.eps == first.input_norm.eps
        and layer.post_attention_norm.eps == first.input_norm.eps
        and layer.intermediate_size == first.intermediate_size
    )

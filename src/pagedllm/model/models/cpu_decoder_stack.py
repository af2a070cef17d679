"""Running a Llama-family decoder stack as one compiled op on CPU (`pagedllm::decoder_stack`).

The Python layers call ~11 kernels per layer; between them the interpreter, nn.Module attribute
lookups and the dispatcher cost a few microseconds each, about 2-3 ms of a 10 ms single-stream
token on a 30-layer model. The op (csrc/decoder_stack.cpp) runs the same kernels in the same
order from C++, so its results are bit-identical to the layers'. It applies to pre-norm decoder
layers of `LlamaAttention` + `SwiGLUMLP` with plain RMSNorm, standard rotary tables, no biases,
no soft cap, one rank, the compiled CPU attention backend, and float weights or 4-bit weights
in the layout of the compiled 4-bit kernel (steps of up to its row limit). Anything else keeps
the Python layers. `PAGEDLLM_DECODER_STACK=0` turns it off.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.rotary import RotaryEmbedding
from pagedllm.model.models.decoder import DecoderModel, PreNormDecoderLayer, SwiGLUMLP
from pagedllm.model.models.llama import LlamaAttention
from pagedllm.ops import cpu_kernels
from pagedllm.ops.packed_linear import PackedBF16Weight

logger = logging.getLogger(__name__)

DISABLE_ENV = "PAGEDLLM_DECODER_STACK"
# Weight kinds, as csrc/decoder_stack.cpp's WeightKind.
PLAIN, PACKED_BF16, INT4 = 0, 1, 2


class CPUDecoderStack:
    """The layers and final norm of a `DecoderModel`, bound to their KV caches, as one op call."""

    def __init__(self, model: DecoderModel, weights, weight_kinds, max_rows: int | None, vnni: bool):
        first = model.layers[0]
        attn: LlamaAttention = first.self_attn
        self.num_heads = attn.attn.num_heads
        self.num_kv_heads = attn.attn.num_kv_heads
        self.head_dim = attn.attn.head_dim
        self.scale = attn.attn.scale
        self.eps = first.input_layernorm.eps
        self.intermediate_size = first.mlp.down_proj.input_size
        self.cos_sin_cache = attn.rotary_emb.cos_sin_cache
        self.weights = weights
        self.weight_kinds = weight_kinds
        self.kv_caches = [layer.self_attn.attn.kv_cache for layer in model.layers]
        self.layer_groups = [layer.self_attn.attn.kv_group for layer in model.layers]
        self.windows = [layer.self_attn.attn.sliding_window or 0 for layer in model.layers]
        self.max_rows = max_rows  # None: any number of tokens
        self.vnni = vnni

    def applies(self, hidden: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata) -> bool:
        """Whether this step can run through the op (else the Python layers run it)."""
        tokens = hidden.shape[0]
        return (
            tokens == md.num_actual_tokens
            and (self.max_rows is None or tokens <= self.max_rows)
            and isinstance(md.backend, CPUPagedBackend)
            and positions.dtype == torch.int64
            and positions.is_contiguous()
            and hidden.is_contiguous()
        )

    def __call__(self, hidden: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        """Embedding output [T, hidden] -> final-normed hidden states [T, hidden]."""
        return torch.ops.pagedllm.decoder_stack(
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
            self.vnni,
        )


def bind_decoder_stack(model: nn.Module, backend) -> CPUDecoderStack | None:
    """Attach a `CPUDecoderStack` to `model.model` when every layer qualifies (see the module
    docstring); call after the KV caches are bound. Returns it, or None (Python layers run)."""
    decoder = getattr(model, "model", None)
    if os.environ.get(DISABLE_ENV, "1") == "0" or not isinstance(decoder, DecoderModel):
        return None
    stack = _build(decoder, backend)
    decoder.fused_stack = stack
    if stack is not None:
        logger.info("decoder layers run as one compiled op (pagedllm::decoder_stack)")
    return stack


def _build(decoder: DecoderModel, backend) -> CPUDecoderStack | None:
    if not isinstance(backend, CPUPagedBackend) or decoder.step_positions is not None:
        return None
    if type(decoder.norm) is not RMSNorm or not decoder.layers:
        return None
    if not cpu_kernels.available() or not hasattr(torch.ops.pagedllm, "decoder_stack"):
        return None
    weights: list[torch.Tensor] = []
    kinds: list[int] = []
    max_rows: int | None = None
    reference = decoder.layers[0]
    for layer in decoder.layers:
        if not _layer_qualifies(layer, reference):
            return None
        attn, mlp = layer.self_attn, layer.mlp
        parts = [
            layer.input_layernorm,
            attn.qkv_proj,
            attn.o_proj,
            layer.post_attention_layernorm,
            mlp.gate_up_proj,
            mlp.down_proj,
        ]
        for part in parts:
            if isinstance(part, RMSNorm):
                weights.append(part.weight)
                kinds.append(PLAIN)
                continue
            entry = _linear_entry(part)
            if entry is None:
                return None
            weight, kind, rows = entry
            weights.append(weight)
            kinds.append(kind)
            if rows is not None:
                max_rows = rows if max_rows is None else min(max_rows, rows)
    weights.append(decoder.norm.weight)
    kinds.append(PLAIN)
    key_cache = reference.self_attn.attn.kv_cache[0]
    return CPUDecoderStack(decoder, weights, kinds, max_rows, cpu_kernels.vnni_layout(key_cache))


def _layer_qualifies(layer, reference) -> bool:
    if type(layer) is not PreNormDecoderLayer:
        return False
    attn, mlp = layer.self_attn, layer.mlp
    if type(attn) is not LlamaAttention or type(mlp) is not SwiGLUMLP:
        return False
    if type(layer.input_layernorm) is not RMSNorm or type(layer.post_attention_layernorm) is not RMSNorm:
        return False
    inner = attn.attn
    ref_attn = reference.self_attn
    if (
        inner.kv_cache is None
        or inner.logits_soft_cap is not None
        or type(attn.rotary_emb) is not RotaryEmbedding
        or attn.rotary_emb is not ref_attn.rotary_emb
        or attn.rotary_emb.cos_sin_cache.shape[1] != inner.head_dim
        or (inner.num_heads, inner.num_kv_heads, inner.head_dim, inner.scale)
        != (ref_attn.attn.num_heads, ref_attn.attn.num_kv_heads, ref_attn.attn.head_dim, ref_attn.attn.scale)
        or layer.input_layernorm.eps != reference.input_layernorm.eps
        or layer.post_attention_layernorm.eps != reference.input_layernorm.eps
    ):
        return False
    # The fused q/k/v output must split exactly into the heads the attention uses.
    if attn.qkv_proj.q_size != inner.num_heads * inner.head_dim:
        return False
    linears = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    return all(lin.bias is None and lin.tp_size == 1 for lin in linears)


def _linear_entry(linear) -> tuple[torch.Tensor, int, int | None] | None:
    """(weight, kind, max rows) the op takes for a linear layer; None if it cannot take it."""
    quant = linear.quant
    if quant is None:
        weight = linear.weight
        if weight is None or not weight.is_contiguous() or weight.device.type != "cpu":
            return None
        return weight, PLAIN, None
    if isinstance(quant, PackedBF16Weight):
        return quant.packed, PACKED_BF16, None
    if getattr(quant, "uses_gemv_kernel", False):
        return quant.packed, INT4, quant.gemv_max_rows
    return None

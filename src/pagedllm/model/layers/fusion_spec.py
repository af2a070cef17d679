"""What a model tells a step compiler it may fuse: an explicit description, read once.

A step compiler (pagedllm/platforms/: the CPU decoder stack; CUDA graphs later) runs a whole
decoder stack as one compiled call. It never reads a layer's private attributes: it asks the
model for `fusion_spec()` after the KV caches are bound, and gets either None (this model
cannot be described; its Python layers run) or a `DecoderStackSpec` naming every tensor and
constant the fused step needs. A layer describes only what it really computes: a spec of a
given `kind` is a promise that running the described tensors through that kind's fixed
sequence of operations gives the layer's own results.

Kind "prenorm_swiglu" (the Llama family), per layer:

    h = rms_norm(x, input_norm)            (first layer; later: x, residual = add + rms_norm)
    q, k, v = split(h @ qkv^T);  q, k rotated by `rotary_cos_sin` at each token's position
    write k, v into the layer's KV cache; a = paged attention(q) over it
    x = a @ o^T; x, residual = add + rms_norm(x, residual, post_attention_norm)
    x = down(silu(gate) * up) with gate | up = x @ gate_up^T

then the final norm. No biases, no soft cap, one tensor-parallel rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pagedllm.attention.backends.base import AttentionBackend, KVCacheLayout
from pagedllm.ops.weight_spec import WeightSpec


@dataclass(frozen=True, slots=True)
class NormSpec:
    """A plain RMSNorm: x / rms(x) * weight, statistics in float32."""

    weight: torch.Tensor
    eps: float


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """A paged attention layer as bound by the runner, with its rotary table."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None
    backend: AttentionBackend
    kv_cache: torch.Tensor
    kv_layout: KVCacheLayout
    kv_group: int
    # float32 [max_position, head_dim]: cos | sin of every position (rotate-half over the full head)
    rotary_cos_sin: torch.Tensor


@dataclass(frozen=True, slots=True)
class PreNormSwiGLULayerSpec:
    """One layer of kind "prenorm_swiglu" (see the module docstring)."""

    input_norm: NormSpec
    qkv: WeightSpec
    attention: AttentionSpec
    o: WeightSpec
    post_attention_norm: NormSpec
    gate_up: WeightSpec
    down: WeightSpec
    intermediate_size: int


@dataclass(frozen=True, slots=True)
class DecoderStackSpec:
    """The whole stack: token ids -> `embed` -> layers -> `final_norm` -> hidden states."""

    kind: str
    embed: Callable[[torch.Tensor], torch.Tensor]
    layers: list[PreNormSwiGLULayerSpec]
    final_norm: NormSpec

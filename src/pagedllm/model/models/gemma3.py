"""Gemma 3 (text): interleaved sliding-window and full attention, QK-norm, sandwich norms.

Each decoder layer is

    x -> norm -> attention -> norm -> + -> norm -> gelu-tanh MLP -> norm -> +
    |________________________________|  |__________________________________|

with Gemma's RMSNorm (scale 1 + w, in float32). Attention normalises q and k per head,
rotates them with the rope of the layer's type (local layers: base 10,000, no scaling; global
layers: the config's base and scaling) and scales scores by query_pre_attn_scalar ** -0.5.
Local layers see a sliding window; every `sliding_window_pattern`-th layer is global (the
config's `layer_types`). Embeddings are multiplied by sqrt(hidden_size) in the model dtype;
final logits may be soft-capped. `Gemma3ForConditionalGeneration` checkpoints load their
language model only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import GemmaRMSNorm
from pagedllm.model.layers.rotary import RotaryEmbedding, get_rope
from pagedllm.model.model_config import head_dim_of
from pagedllm.model.models.decoder import load_mapped_weights, stacked_name

SLIDING, FULL = "sliding_attention", "full_attention"
_DEFAULT_THETA = {SLIDING: 10_000.0, FULL: 1_000_000.0}

# Multimodal checkpoint prefixes of the language model -> ours; other towers are skipped.
_TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)
_SKIPPED_PREFIXES = (
    "model.vision_tower.",
    "model.multi_modal_projector.",
    "vision_tower.",
    "multi_modal_projector.",
)


def layer_types_of(config: PretrainedConfig) -> list[str]:
    """Each layer's attention type: the config's `layer_types`, else every 6th layer global."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    pattern = getattr(config, "sliding_window_pattern", None) or getattr(config, "_sliding_window_pattern", 6)
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(config.num_hidden_layers)]


def rope_parameters_for(config: PretrainedConfig, layer_type: str) -> dict:
    """Rope type, base and scaling of one layer type, from `rope_parameters` or older fields."""
    nested = getattr(config, "rope_parameters", None) or {}
    if isinstance(nested.get(layer_type), dict):
        params = dict(nested[layer_type])
    elif layer_type == SLIDING:
        params = {"rope_theta": getattr(config, "rope_local_base_freq", None) or _DEFAULT_THETA[SLIDING]}
    else:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", None) or _DEFAULT_THETA[FULL])
    params.setdefault("rope_type", params.get("type", "default"))
    return params


class Gemma3MLP(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        act = getattr(config, "hidden_activation", None) or config.hidden_act
        if act not in ("gelu_pytorch_tanh", "gelu_new"):
            raise ValueError(f"Gemma 3's MLP supports gelu_pytorch_tanh only, got {act!r}")
        inter = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], False, tp_rank, tp_size
        )
        self.down_proj = RowParallelLinear(inter, config.hidden_size, False, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3Attention(nn.Module):
    """q/k/v projection, per-head RMSNorm of q and k, rotary, paged attention, output projection."""

    def __init__(
        self,
        config: PretrainedConfig,
        rotary: RotaryEmbedding,
        sliding_window: int | None,
        tp_rank: int,
        tp_size: int,
    ):
        super().__init__()
        head_dim = head_dim_of(config)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        bias = getattr(config, "attention_bias", False)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, head_dim, heads, kv_heads, bias, tp_rank, tp_size
        )
        self.o_proj = RowParallelLinear(heads * head_dim, config.hidden_size, bias, tp_rank, tp_size)
        self.q_norm = GemmaRMSNorm(head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary
        self.head_dim = head_dim
        local = self.qkv_proj
        self.attn = Attention(
            local.num_heads,
            head_dim,
            local.num_kv_heads,
            config.query_pre_attn_scalar**-0.5,
            sliding_window,
            getattr(config, "attn_logit_softcapping", None),
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj.split_qkv(self.qkv_proj(hidden))
        t, d = q.shape[0], self.head_dim
        q = self.q_norm(q.view(t, -1, d)).view(t, -1)
        k = self.k_norm(k.view(t, -1, d)).view(t, -1)
        # q and k side by side: rotate both with one set of ops.
        qk = self.rotary_emb.rotate(positions, torch.cat([q, k], dim=-1))
        q, k = qk.split([q.shape[1], k.shape[1]], dim=-1)
        return self.o_proj(self.attn(q, k, v, md))


class Gemma3DecoderLayer(nn.Module):
    """Sandwich norms around attention and MLP; the residual stream is carried separately so
    each add fuses into the norm that follows it."""

    def __init__(self, config, rotary, sliding_window, tp_rank: int, tp_size: int):
        super().__init__()
        self.self_attn = Gemma3Attention(config, rotary, sliding_window, tp_rank, tp_size)
        self.mlp = Gemma3MLP(config, tp_rank, tp_size)
        size, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(size, eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.post_attention_layernorm(self.self_attn(positions, hidden, md))
        hidden, residual = self.pre_feedforward_layernorm(hidden, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden)), residual


class Gemma3Model(nn.Module):
    """Scaled embedding, decoder layers with local and global rotary tables, final norm."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("Gemma 3 with use_bidirectional_attention is not supported (causal LM only)")
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        # sqrt(hidden) in float32, then rounded to the model dtype (as transformers does).
        normalizer = torch.tensor(config.hidden_size**0.5, dtype=torch.float32)
        self.register_buffer("normalizer", normalizer.to(torch.get_default_dtype()), persistent=False)
        head_dim = head_dim_of(config)
        types = layer_types_of(config)
        windows = [config.sliding_window if kind == SLIDING else None for kind in types]
        # One cos/sin table per layer type, shared by the layers of that type.
        ropes = {}
        for kind in sorted(set(types)):
            params = rope_parameters_for(config, kind)
            ropes[kind] = get_rope(head_dim, config.max_position_embeddings, params["rope_theta"], params)
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, ropes[types[i]], windows[i], tp_rank, tp_size)
            for i in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids) * self.normalizer, None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, md)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Gemma3ForCausalLM(nn.Module):
    """Decoder plus (usually tied) LM head; compute_logits returns logits in the LM head's dtype,
    or soft-capped in float32 if configured."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.config = config
        self.model = Gemma3Model(config, tp_rank, tp_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        tied = self.model.embed_tokens if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size, tied_to=tied)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata):
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden)
        cap = self.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits.float() / cap) * cap

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (Hugging Face names) into the parameters; returns the names loaded."""
        return load_mapped_weights(self, weights, self._param_for)

    def _param_for(self, name: str) -> tuple[str, object] | None:
        name = _text_name(name)
        if name is None or (self.tie_word_embeddings and name == "lm_head.weight"):
            return None  # another tower's tensor / shared with the embedding
        return stacked_name(name)


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """The language model of a multimodal Gemma 3 checkpoint (text prompts only)."""


def _text_name(name: str) -> str | None:
    """A language-model tensor's name in our layout; None for vision/projector tensors."""
    if name.startswith(_SKIPPED_PREFIXES):
        return None
    for prefix, ours in _TEXT_PREFIXES:
        if name.startswith(prefix):
            return ours + name[len(prefix) :]
    return name

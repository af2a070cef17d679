"""Qwen3 dense (`Qwen3ForCausalLM`): Llama-shaped, with an RMSNorm over each head of q and k
(QK-norm) applied before rotary, a head size read from the config, and no q/k/v bias unless
`attention_bias` is set.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.rotary import RotaryEmbedding, get_rope
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of
from pagedllm.model.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer, SwiGLUMLP
from pagedllm.model.models.llama import LlamaAttention


class Qwen3Attention(LlamaAttention):
    """Llama attention plus `q_norm` / `k_norm`: RMSNorm over head_dim, shared by all heads."""

    def fusion_spec(self) -> None:
        # The per-head q/k norms are not part of the "prenorm_swiglu" attention.
        return None

    def __init__(
        self,
        config: PretrainedConfig,
        rotary: RotaryEmbedding,
        sliding_window: int | None,
        tp_rank: int,
        tp_size: int,
    ):
        bias = bool(getattr(config, "attention_bias", False))
        super().__init__(config, rotary, sliding_window, bias, tp_rank, tp_size)
        self.head_dim = head_dim_of(config)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj.split_qkv(self.qkv_proj(hidden))
        t = q.shape[0]
        q = self.q_norm(q.reshape(t, -1, self.head_dim)).view(t, -1)
        k = self.k_norm(k.reshape(t, -1, self.head_dim)).view(t, -1)
        q, k = self.rotary_emb.rotate(positions, q), self.rotary_emb.rotate(positions, k)
        return self.o_proj(self.attn(q, k, v, md))


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Decoder of Qwen3 layers; checkpoint names are Llama's plus `self_attn.{q,k}_norm.weight`."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        rope = rope_parameters_of(config)
        rotary = get_rope(head_dim_of(config), config.max_position_embeddings, rope["rope_theta"], rope)
        windows = sliding_windows_of(config)

        def make_layer(i: int) -> PreNormDecoderLayer:
            attn = Qwen3Attention(config, rotary, windows[i], tp_rank, tp_size)
            mlp = SwiGLUMLP(
                config.hidden_size, config.intermediate_size, config.hidden_act, False, tp_rank, tp_size
            )
            return PreNormDecoderLayer(attn, mlp, config.hidden_size, config.rms_norm_eps)

        super().__init__(config, DecoderModel(config, make_layer, tp_rank, tp_size), tp_rank, tp_size)

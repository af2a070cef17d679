"""The Llama family: Llama 2/3, SmolLM2, Mistral (sliding window) and Qwen2 (q/k/v bias).

The network is decoder.py's pre-norm stack (RMSNorm -> attention -> RMSNorm -> SwiGLU MLP) with
`LlamaAttention`, run over a flat batch of tokens from many requests; paged attention keeps
requests apart. Checkpoint names map onto the fused q/k/v and gate/up parameters as decoder.py does.
`LlamaAttention` is also the attention of Qwen3, Phi-3, Mixtral and Qwen2-MoE.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.direct_call import DirectCall
from pagedllm.model.layers.fusion_spec import AttentionSpec
from pagedllm.model.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.rotary import RotaryEmbedding, get_rope
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of
from pagedllm.model.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer, SwiGLUMLP


class LlamaAttention(DirectCall, nn.Module):
    """Fused q/k/v projection, rotary embedding, paged attention and the output projection."""

    def __init__(
        self,
        config: PretrainedConfig,
        rotary: RotaryEmbedding,
        sliding_window: int | None,
        qkv_bias: bool,
        tp_rank: int,
        tp_size: int,
    ):
        super().__init__()
        head_dim = head_dim_of(config)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, head_dim, heads, kv_heads, qkv_bias, tp_rank, tp_size
        )
        o_bias = getattr(config, "attention_bias", False)
        self.o_proj = RowParallelLinear(heads * head_dim, config.hidden_size, o_bias, tp_rank, tp_size)
        self.rotary_emb = rotary
        local = self.qkv_proj
        self.attn = Attention(local.num_heads, head_dim, local.num_kv_heads, head_dim**-0.5, sliding_window)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q_size, kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        # q and k sit side by side in the fused output: rotate both with one set of ops.
        qk, v = qkv.split([q_size + kv_size, kv_size], dim=-1)
        q, k = self.rotary_emb.rotate(positions, qk).split([q_size, kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v, md))

    def fusion_spec(self):
        """(qkv, attention, o) specs for a step compiler, or None where this layer computes
        more than fusion_spec.py's "prenorm_swiglu" attention (biases, soft cap, sharding,
        a rotary that is not a plain table)."""
        attn, table = self.attn, self.rotary_emb.fusion_table()
        linears = (self.qkv_proj, self.o_proj)
        if (
            table is None
            or attn.backend is None
            or attn.logits_soft_cap is not None
            or any(lin.bias is not None or lin.tp_size != 1 for lin in linears)
            or self.qkv_proj.q_size != attn.num_heads * attn.head_dim
        ):
            return None
        qkv, o = self.qkv_proj.weight_spec(), self.o_proj.weight_spec()
        if qkv is None or o is None:
            return None
        spec = AttentionSpec(
            num_heads=attn.num_heads,
            num_kv_heads=attn.num_kv_heads,
            head_dim=attn.head_dim,
            scale=attn.scale,
            sliding_window=attn.sliding_window,
            backend=attn.backend,
            kv_cache=attn.kv_cache,
            kv_layout=attn.kv_layout,
            kv_group=attn.kv_group,
            rotary_cos_sin=table,
        )
        return qkv, spec, o


class LlamaForCausalLM(DecoderForCausalLM):
    """Decoder of LlamaAttention + SwiGLU layers plus the LM head (see DecoderForCausalLM)."""

    # Qwen2 always has q/k/v biases; Llama has them only when the config sets attention_bias.
    qkv_bias_always = False

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        qkv_bias = self.qkv_bias_always or getattr(config, "attention_bias", False)
        mlp_bias = getattr(config, "mlp_bias", False)
        rope = rope_parameters_of(config)
        # One cos/sin cache shared by every layer.
        rotary = get_rope(head_dim_of(config), config.max_position_embeddings, rope["rope_theta"], rope)
        windows = sliding_windows_of(config)

        def make_layer(i: int) -> PreNormDecoderLayer:
            attn = LlamaAttention(config, rotary, windows[i], qkv_bias, tp_rank, tp_size)
            mlp = SwiGLUMLP(
                config.hidden_size, config.intermediate_size, config.hidden_act, mlp_bias, tp_rank, tp_size
            )
            return PreNormDecoderLayer(attn, mlp, config.hidden_size, config.rms_norm_eps)

        super().__init__(config, DecoderModel(config, make_layer, tp_rank, tp_size), tp_rank, tp_size)


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama with a sliding attention window (read from the config)."""


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with biases on the q, k and v projections."""

    qkv_bias_always = True

"""The Llama family: Llama 2/3, SmolLM2, Mistral (sliding window) and Qwen2 (q/k/v bias).

The network is a stack of pre-norm decoder layers (RMSNorm -> attention -> RMSNorm -> SwiGLU MLP),
run over a flat batch of tokens from many requests; paged attention keeps requests apart.
`load_weights` maps Hugging Face checkpoint names onto the fused q/k/v and gate/up parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.activation import SiluAndMul
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.layers.rotary import RotaryEmbedding, get_rope
from pagedllm.model.loader.weights import default_weight_loader
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of

# (fused parameter, checkpoint projection, shard id)
_STACKED = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"the Llama MLP supports hidden_act 'silu' only, got {config.hidden_act!r}")
        bias = getattr(config, "mlp_bias", False)
        inter = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], bias, tp_rank, tp_size
        )
        self.act_fn = SiluAndMul()
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
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


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks; the residual stream is carried separately so the
    add can be fused into the following norm."""

    def __init__(self, config, rotary, sliding_window, qkv_bias: bool, tp_rank: int, tp_size: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, rotary, sliding_window, qkv_bias, tp_rank, tp_size)
        self.mlp = LlamaMLP(config, tp_rank, tp_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

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
        hidden = self.self_attn(positions, hidden, md)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    """Embedding, decoder layers and the final norm."""

    def __init__(self, config: PretrainedConfig, qkv_bias: bool, tp_rank: int, tp_size: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        rope = rope_parameters_of(config)
        # One cos/sin cache shared by every layer.
        rotary = get_rope(head_dim_of(config), config.max_position_embeddings, rope["rope_theta"], rope)
        windows = sliding_windows_of(config)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, rotary, windows[i], qkv_bias, tp_rank, tp_size)
            for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, md)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """Decoder plus LM head. forward: flat tokens [T] -> hidden [T, hidden]; compute_logits: -> float32."""

    # Qwen2 always has q/k/v biases; Llama has them only when the config sets attention_bias.
    qkv_bias_always = False

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.config = config
        qkv_bias = self.qkv_bias_always or getattr(config, "attention_bias", False)
        self.model = LlamaModel(config, qkv_bias, tp_rank, tp_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        tied = self.model.embed_tokens if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size, tied_to=tied)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata):
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (Hugging Face names) into the parameters; returns the names loaded."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (self.tie_word_embeddings and name == "lm_head.weight"):
                continue  # derived from the config / shared with the embedding
            param_name, shard_id = _fused_name(name)
            if param_name not in params:
                raise ValueError(
                    f"checkpoint tensor {name!r} has no matching parameter in {type(self).__name__}"
                )
            param = params[param_name]
            loader = getattr(param, "weight_loader", None)
            if loader is None:
                default_weight_loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
            loaded.add(param_name)
        _check_complete(params, loaded)
        return loaded


def _fused_name(name: str) -> tuple[str, str | int | None]:
    for fused, part, shard_id in _STACKED:
        if f".{part}." in name:
            return name.replace(f".{part}.", f".{fused}."), shard_id
    return name, None


def _check_complete(params: dict[str, nn.Parameter], loaded: set[str]) -> None:
    missing = sorted(set(params) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} parameter(s): {shown}")


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: Llama with a sliding attention window (read from the config)."""


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: Llama with biases on the q, k and v projections."""

    qkv_bias_always = True

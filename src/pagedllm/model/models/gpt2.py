"""GPT-2 (`GPT2LMHeadModel`): learned absolute position embeddings, pre-LayerNorm blocks with
biases everywhere, multi-head attention, a GELU MLP (`activation_function`, usually gelu_new)
and an LM head tied to the token embedding.

Checkpoints store projections as `Conv1D` weights, [in, out] (transposed against nn.Linear);
they are transposed on load. q/k/v arrive fused as `c_attn`. Attention logits are scaled by
1/sqrt(head_dim) only when `scale_attn_weights`, and further by 1/(layer + 1) when
`scale_attn_by_inverse_layer_idx`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.activation import get_act_fn
from pagedllm.model.layers.attention import Attention
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.layers.layernorm import LayerNorm
from pagedllm.model.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.model.layers.parallel import new_parameter
from pagedllm.model.models.decoder import load_mapped_weights

# Projections saved as Conv1D ([in, out]) in GPT-2 checkpoints.
_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
# Causal-mask buffers some checkpoints carry; the paged backend masks by itself.
_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")


class GPT2Attention(nn.Module):
    """Fused q/k/v (with biases), paged attention, output projection."""

    def __init__(self, config: PretrainedConfig, layer: int, tp_rank: int, tp_size: int):
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            raise ValueError(f"GPT-2 hidden size {hidden} is not divisible by its {heads} heads")
        head_dim = hidden // heads
        self.c_attn = QKVParallelLinear(hidden, head_dim, heads, heads, True, tp_rank, tp_size)
        self.c_proj = RowParallelLinear(hidden, hidden, True, tp_rank, tp_size)
        scale = head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= layer + 1
        heads_here = self.c_attn.num_heads
        self.attn = Attention(heads_here, head_dim, heads_here, scale)

    def forward(self, hidden: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.c_attn.split_qkv(self.c_attn(hidden))
        return self.c_proj(self.attn(q, k, v, md))


class GPT2MLP(nn.Module):
    """c_proj(act(c_fc(x))), column- then row-parallel."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.hidden_size
        self.c_fc = ColumnParallelLinear(config.hidden_size, inner, True, tp_rank, tp_size)
        self.act = get_act_fn(config.activation_function)
        self.c_proj = RowParallelLinear(inner, config.hidden_size, True, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    def __init__(self, config: PretrainedConfig, layer: int, tp_rank: int, tp_size: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps)
        self.attn = GPT2Attention(config, layer, tp_rank, tp_size)
        self.ln_2 = LayerNorm(config.hidden_size, eps)
        self.mlp = GPT2MLP(config, tp_rank, tp_size)

    def forward(self, hidden: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln_1(hidden), md)
        return hidden + self.mlp(self.ln_2(hidden))


class PositionEmbedding(nn.Module):
    """Learned absolute positions [max_positions, dim], replicated on every rank."""

    def __init__(self, max_positions: int, dim: int):
        super().__init__()
        self.weight = new_parameter(max_positions, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.weight)


class GPT2Model(nn.Module):
    """Token + position embeddings, the blocks and the final LayerNorm."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (an encoder-decoder setup) is not supported")
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        self.wpe = PositionEmbedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(
            GPT2Block(config, i, tp_rank, tp_size) for i in range(config.num_hidden_layers)
        )
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        hidden = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden = block(hidden, md)
        return self.ln_f(hidden)


class GPT2LMHeadModel(nn.Module):
    """forward: flat tokens [T] -> hidden [T, hidden]; compute_logits: -> logits in the LM head's dtype."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config, tp_rank, tp_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", True))
        tied = self.transformer.wte if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size, tied_to=tied)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata):
        return self.transformer(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a GPT-2 checkpoint: Conv1D weights transposed, mask buffers skipped, and names
        without the `transformer.` prefix (the original OpenAI upload) accepted."""
        return load_mapped_weights(self, (_as_linear(n, t) for n, t in weights), self._param_for)

    def _param_for(self, name: str) -> tuple[str, object] | None:
        if name.endswith(_MASK_BUFFERS) or (self.tie_word_embeddings and name == "lm_head.weight"):
            return None
        return name, None


def _as_linear(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    if not name.startswith(("transformer.", "lm_head.")):
        name = f"transformer.{name}"
    if name.endswith(_CONV1D) and tensor.dim() == 2:
        tensor = tensor.t()
    return name, tensor

"""Qwen2-MoE (`Qwen2MoeForCausalLM`, e.g. Qwen1.5-MoE): Qwen2 attention (q/k/v bias) with a sparse
MoE MLP of `num_experts` small SwiGLU experts (top `num_experts_per_tok`, renormalised only when
`norm_topk_prob`) plus a shared expert every token passes through, scaled by
sigmoid(`shared_expert_gate`(x)). Layers listed in `mlp_only_layers`, or off the
`decoder_sparse_step` stride, keep a dense MLP of `intermediate_size`.

Checkpoints name experts one by one, `mlp.experts.N.{gate,up,down}_proj.weight`; transformers 5's
in-memory stacked names (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) load too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.model.layers.linear import ReplicatedLinear
from pagedllm.model.layers.moe import FusedMoE, expert_param_name
from pagedllm.model.layers.rotary import get_rope
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of
from pagedllm.model.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer, SwiGLUMLP
from pagedllm.model.models.llama import LlamaAttention


class Qwen2MoeSparseMoeBlock(nn.Module):
    """Router, routed experts, and the gated shared expert."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.gate = ReplicatedLinear(hidden, config.num_experts, False, tp_rank, tp_size)
        self.experts = FusedMoE(
            config.num_experts,
            config.num_experts_per_tok,
            hidden,
            config.moe_intermediate_size,
            renormalize=bool(config.norm_topk_prob),
            tp_rank=tp_rank,
            tp_size=tp_size,
            hidden_act=config.hidden_act,
        )
        self.shared_expert = None
        if getattr(config, "shared_expert_intermediate_size", 0):
            self.shared_expert = SwiGLUMLP(
                hidden, config.shared_expert_intermediate_size, config.hidden_act, False, tp_rank, tp_size
            )
            self.shared_expert_gate = ReplicatedLinear(hidden, 1, False, tp_rank, tp_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.experts(hidden, self.gate(hidden))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(hidden)) * self.shared_expert(hidden)
        return out


def is_sparse_layer(config: PretrainedConfig, layer: int) -> bool:
    """Whether decoder layer `layer` has the MoE block (else a dense MLP), as Qwen2-MoE decides."""
    only_dense = layer in (getattr(config, "mlp_only_layers", None) or [])
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return not only_dense and config.num_experts > 0 and (layer + 1) % step == 0


class Qwen2MoeForCausalLM(DecoderForCausalLM):
    """Qwen2-MoE decoder."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        rope = rope_parameters_of(config)
        rotary = get_rope(head_dim_of(config), config.max_position_embeddings, rope["rope_theta"], rope)
        windows = sliding_windows_of(config)
        qkv_bias = bool(getattr(config, "qkv_bias", True))

        def make_layer(i: int) -> PreNormDecoderLayer:
            attn = LlamaAttention(config, rotary, windows[i], qkv_bias, tp_rank, tp_size)
            if is_sparse_layer(config, i):
                mlp = Qwen2MoeSparseMoeBlock(config, tp_rank, tp_size)
            else:
                mlp = SwiGLUMLP(
                    config.hidden_size, config.intermediate_size, config.hidden_act, False, tp_rank, tp_size
                )
            return PreNormDecoderLayer(attn, mlp, config.hidden_size, config.rms_norm_eps)

        super().__init__(config, DecoderModel(config, make_layer, tp_rank, tp_size), tp_rank, tp_size)

    def param_for(self, name: str) -> tuple[str, object] | None:
        return expert_param_name(name) or super().param_for(name)

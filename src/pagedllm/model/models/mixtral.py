"""Mixtral (`MixtralForCausalLM`): Mistral attention (GQA, optional sliding window) with a sparse
mixture-of-experts MLP: a router picks the top `num_experts_per_tok` of `num_local_experts`
SwiGLU experts per token and their weights are always renormalised to sum to 1.

Checkpoints written by transformers (4 and 5) name experts one by one,
`block_sparse_moe.experts.N.w1/w2/w3.weight` (gate, down, up) beside `block_sparse_moe.gate.weight`;
transformers 5's in-memory names (`mlp.experts.gate_up_proj`, stacked over experts) load too.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.model.layers.linear import ReplicatedLinear
from pagedllm.model.layers.moe import FusedMoE, expert_param_name
from pagedllm.model.layers.rotary import get_rope
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of
from pagedllm.model.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer
from pagedllm.model.models.llama import LlamaAttention


class MixtralSparseMoeBlock(nn.Module):
    """Router (`gate`, replicated) and the experts."""

    def __init__(self, config: PretrainedConfig, tp_rank: int, tp_size: int):
        super().__init__()
        experts = config.num_local_experts
        self.gate = ReplicatedLinear(config.hidden_size, experts, False, tp_rank, tp_size)
        self.experts = FusedMoE(
            experts,
            config.num_experts_per_tok,
            config.hidden_size,
            config.intermediate_size,
            renormalize=True,
            tp_rank=tp_rank,
            tp_size=tp_size,
            hidden_act=config.hidden_act,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden, self.gate(hidden))


class MixtralForCausalLM(DecoderForCausalLM):
    """Mixtral decoder; the MoE block is held as `mlp` (`block_sparse_moe` in checkpoints)."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        rope = rope_parameters_of(config)
        rotary = get_rope(head_dim_of(config), config.max_position_embeddings, rope["rope_theta"], rope)
        windows = sliding_windows_of(config)

        def make_layer(i: int) -> PreNormDecoderLayer:
            attn = LlamaAttention(config, rotary, windows[i], False, tp_rank, tp_size)
            moe = MixtralSparseMoeBlock(config, tp_rank, tp_size)
            return PreNormDecoderLayer(attn, moe, config.hidden_size, config.rms_norm_eps)

        super().__init__(config, DecoderModel(config, make_layer, tp_rank, tp_size), tp_rank, tp_size)

    def param_for(self, name: str) -> tuple[str, object] | None:
        name = name.replace(".block_sparse_moe.", ".mlp.")
        return expert_param_name(name) or super().param_for(name)

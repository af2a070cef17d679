"""Phi-3 (`Phi3ForCausalLM`, also Phi-3.5-mini and Phi-4-mini): a Llama-shaped decoder whose checkpoint
stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`, with LongRoPE for long context
and optional partial rotary (`partial_rotary_factor`). See layers/longrope.py for when the long
factors apply and how that differs from transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from pagedllm.model.layers.longrope import get_phi3_rope
from pagedllm.model.model_config import head_dim_of, rope_parameters_of, sliding_windows_of
from pagedllm.model.models.decoder import DecoderForCausalLM, DecoderModel, PreNormDecoderLayer, SwiGLUMLP
from pagedllm.model.models.llama import LlamaAttention


class Phi3ForCausalLM(DecoderForCausalLM):
    """Fused checkpoint tensors load through the fused layers' own splitting (shard id None)."""

    def __init__(self, config: PretrainedConfig, tp_rank: int = 0, tp_size: int = 1):
        rope = rope_parameters_of(config)
        rotary = get_phi3_rope(head_dim_of(config), config.max_position_embeddings, rope)
        windows = sliding_windows_of(config)

        def make_layer(i: int) -> PreNormDecoderLayer:
            attn = LlamaAttention(config, rotary, windows[i], False, tp_rank, tp_size)
            mlp = SwiGLUMLP(
                config.hidden_size, config.intermediate_size, config.hidden_act, False, tp_rank, tp_size
            )
            return PreNormDecoderLayer(attn, mlp, config.hidden_size, config.rms_norm_eps)

        step_positions = getattr(rotary, "step_positions", None)
        model = DecoderModel(config, make_layer, tp_rank, tp_size, step_positions)
        super().__init__(config, model, tp_rank, tp_size)

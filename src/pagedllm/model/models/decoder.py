"""Pieces shared by pre-norm decoder families (Llama/Mistral/Qwen2, Qwen3, Phi-3, Mixtral, Qwen2-MoE)
and their loading.

A family supplies one function building decoder layer i (its attention and MLP); the embedding,
the layer stack, the final RMSNorm, the LM head and the checkpoint-name mapping are common:

    embed_tokens -> [input_layernorm -> self_attn -> post_attention_layernorm -> mlp] x N -> norm -> lm_head

The residual stream is carried beside the hidden states so its add fuses into the next norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.activation import SiluAndMul
from pagedllm.model.layers.direct_call import DirectCall
from pagedllm.model.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedllm.model.layers.fusion_spec import DecoderStackSpec, PreNormSwiGLULayerSpec
from pagedllm.model.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from pagedllm.model.layers.norm import RMSNorm
from pagedllm.model.loader.weights import default_weight_loader

# (fused parameter, checkpoint projection, shard id): separate checkpoint projections that share
# one matmul here.
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)

# A checkpoint name -> (parameter name, shard id), or None to skip the tensor.
NameMapper = Callable[[str], "tuple[str, object] | None"]
# (positions, metadata) -> the positions the rotary tables are indexed by this step.
StepPositions = Callable[[torch.Tensor, AttentionMetadata], torch.Tensor]


class SwiGLUMLP(DirectCall, nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one column-parallel matmul."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        bias: bool = False,
        tp_rank: int = 0,
        tp_size: int = 1,
    ):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"gated MLPs support hidden_act 'silu' only, got {hidden_act!r}")
        sizes = [intermediate_size, intermediate_size]
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, sizes, bias, tp_rank, tp_size)
        self.act_fn = SiluAndMul()
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))

    def fusion_spec(self):
        """(gate_up, down) weight specs for a step compiler, or None (biases, sharding, or a
        weight format no compiled step takes)."""
        linears = (self.gate_up_proj, self.down_proj)
        if any(lin.bias is not None or lin.tp_size != 1 for lin in linears):
            return None
        gate_up, down = self.gate_up_proj.weight_spec(), self.down_proj.weight_spec()
        return None if gate_up is None or down is None else (gate_up, down)


class PreNormDecoderLayer(DirectCall, nn.Module):
    """RMSNorm -> attention -> RMSNorm -> MLP, each block added to the residual stream."""

    def __init__(self, self_attn: nn.Module, mlp: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

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

    def fusion_spec(self) -> PreNormSwiGLULayerSpec | None:
        """This layer as a "prenorm_swiglu" layer (fusion_spec.py), if its parts all describe
        themselves so (a MoE MLP, a Qwen3 or biased attention, Gemma's norms do not)."""
        parts = []
        for part in (self.self_attn, self.mlp, self.input_layernorm, self.post_attention_layernorm):
            describe = getattr(part, "fusion_spec", None)
            parts.append(None if describe is None else describe())
        attn, mlp, input_norm, post_norm = parts
        if attn is None or mlp is None or input_norm is None or post_norm is None:
            return None
        (qkv, attention, o), (gate_up, down) = attn, mlp
        return PreNormSwiGLULayerSpec(
            input_norm=input_norm,
            qkv=qkv,
            attention=attention,
            o=o,
            post_attention_norm=post_norm,
            gate_up=gate_up,
            down=down,
            intermediate_size=self.mlp.down_proj.input_size,
        )


class DecoderModel(nn.Module):
    """Embedding, `num_hidden_layers` layers from `make_layer(i)` and the final norm.

    `step_positions`, when given, maps the step's positions once before the layers run (LongRoPE
    uses it to point long-context requests at their own rotary table).
    """

    def __init__(
        self,
        config: PretrainedConfig,
        make_layer: Callable[[int], nn.Module],
        tp_rank: int = 0,
        tp_size: int = 1,
        step_positions: StepPositions | None = None,
    ):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_rank, tp_size)
        self.layers = nn.ModuleList(make_layer(i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.step_positions = step_positions

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        if self.step_positions is not None:
            positions = self.step_positions(positions, md)
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, md)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def fusion_spec(self) -> DecoderStackSpec | None:
        """The stack for a step compiler (fusion_spec.py), or None: positions remapped per step
        (LongRoPE), or a layer that does not describe itself as "prenorm_swiglu"."""
        if self.step_positions is not None or not len(self.layers):
            return None
        layers = []
        for layer in self.layers:
            describe = getattr(layer, "fusion_spec", None)
            spec = None if describe is None else describe()
            if spec is None:
                return None
            layers.append(spec)
        final_norm = self.norm.fusion_spec()
        if final_norm is None:
            return None
        return DecoderStackSpec("prenorm_swiglu", self.embed_tokens, layers, final_norm)


class DecoderForCausalLM(nn.Module):
    """A DecoderModel plus the LM head (tied to the embedding when the config says so).

    forward: flat tokens [T] -> hidden [T, hidden]; compute_logits: hidden -> logits in the LM
    head's dtype (consumers upcast where they need float32; the fused CPU sampler reads bf16 as is).
    Subclasses build the model and may extend `param_for` with their own checkpoint names.
    """

    def __init__(self, config: PretrainedConfig, model: DecoderModel, tp_rank: int = 0, tp_size: int = 1):
        super().__init__()
        self.config = config
        self.model = model
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        tied = model.embed_tokens if self.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, tp_rank, tp_size, tied_to=tied)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata):
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def fusion_spec(self) -> DecoderStackSpec | None:
        """The decoder stack (embedding to final norm) for a step compiler; see fusion_spec.py."""
        return self.model.fusion_spec()

    def param_for(self, name: str) -> tuple[str, object] | None:
        """The parameter (and shard id) a checkpoint tensor loads into; None skips it."""
        if "rotary_emb.inv_freq" in name or (self.tie_word_embeddings and name == "lm_head.weight"):
            return None  # derived from the config / shared with the embedding
        return stacked_name(name)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors (Hugging Face names) into the parameters; returns the names loaded."""
        return load_mapped_weights(self, weights, self.param_for)


def stacked_name(name: str) -> tuple[str, object]:
    """Rename a separate q/k/v or gate/up projection to its fused parameter and shard id."""
    for fused, part, shard_id in STACKED_PARAMS:
        if f".{part}." in name:
            return name.replace(f".{part}.", f".{fused}."), shard_id
    return name, None


def load_mapped_weights(
    module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], param_for: NameMapper
) -> set[str]:
    """Load every tensor into the parameter `param_for` names, through its `weight_loader` if it has
    one; raise for tensors with no parameter and for parameters no tensor filled."""
    params = dict(module.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        target = param_for(name)
        if target is None:
            continue
        param_name, shard_id = target
        if param_name not in params:
            raise ValueError(
                f"checkpoint tensor {name!r} has no matching parameter in {type(module).__name__}"
            )
        param = params[param_name]
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            default_weight_loader(param, tensor)
        else:
            loader(param, tensor, shard_id)
        loaded.add(param_name)
    missing = sorted(set(params) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"checkpoint is missing {len(missing)} parameter(s): {shown}")
    return loaded

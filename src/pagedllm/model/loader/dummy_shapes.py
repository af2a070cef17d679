"""Built-in model shapes for `--load-format dummy`: published configs without their weights.

Each shape is the Hugging Face `config.json` of a public model (layers, widths, heads, vocabulary,
rope, context, tied embeddings, sliding windows, special ids as published), so a benchmark of
random weights in that shape costs what the real model costs. A shape's config is written once
into `<cache>/shapes/<name>-<digest>/config.json` (the digest of its content, so a corrected
shape never reads a stale file) and read from there like any model folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pagedllm.cache_dir import cache_dir
from pagedllm.model.loader.cache import publish_dir


@dataclass(frozen=True, slots=True)
class ModelShape:
    """A named architecture shape: the published config of `source`, weights not included."""

    name: str
    source: str
    config: dict

    @property
    def description(self) -> str:
        c = self.config
        return (
            f"{self.source}: {c['architectures'][0]}, {c['num_hidden_layers']} layers, "
            f"hidden {c['hidden_size']}, vocab {c['vocab_size']}"
        )


_LLAMA3_ROPE_32 = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}
_LLAMA3_ROPE_8 = dict(_LLAMA3_ROPE_32, factor=8.0)
_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "vocab_size": 128256,
}


def _llama3(layers: int, hidden: int, inter: int, heads: int, tied: bool, rope: dict, **extra) -> dict:
    return dict(
        _LLAMA3,
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=8,
        tie_word_embeddings=tied,
        rope_scaling=rope,
        **extra,
    )


_SHAPES = (
    ModelShape(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "mlp_bias": False,
            "hidden_act": "silu",
            "bos_token_id": 0,
            "eos_token_id": 0,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "max_position_embeddings": 8192,
            "num_attention_heads": 9,
            "num_hidden_layers": 30,
            "num_key_value_heads": 3,
            "rms_norm_eps": 1e-05,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
            "vocab_size": 49152,
        },
    ),
    ModelShape(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B",
        _llama3(16, 2048, 8192, 32, True, _LLAMA3_ROPE_32, head_dim=64),
    ),
    ModelShape(
        "llama-3.2-3b",
        "meta-llama/Llama-3.2-3B",
        _llama3(28, 3072, 8192, 24, True, _LLAMA3_ROPE_32, head_dim=128),
    ),
    ModelShape(
        "llama-3.1-8b", "meta-llama/Llama-3.1-8B", _llama3(32, 4096, 14336, 32, False, _LLAMA3_ROPE_8)
    ),
    ModelShape(
        "llama-3.1-70b", "meta-llama/Llama-3.1-70B", _llama3(80, 8192, 28672, 64, False, _LLAMA3_ROPE_8)
    ),
    ModelShape(
        "mistral-7b",
        "mistralai/Mistral-7B-v0.3",
        {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "max_position_embeddings": 32768,
            "num_attention_heads": 32,
            "num_hidden_layers": 32,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "vocab_size": 32768,
        },
    ),
    ModelShape(
        "qwen2.5-7b",
        "Qwen/Qwen2.5-7B",
        {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151643,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "max_position_embeddings": 131072,
            "max_window_layers": 28,
            "num_attention_heads": 28,
            "num_hidden_layers": 28,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            # Published with a window the model never uses (use_sliding_window is false).
            "sliding_window": 131072,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "vocab_size": 152064,
        },
    ),
    ModelShape(
        "qwen3-8b",
        "Qwen/Qwen3-8B",
        {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": False,
            "hidden_act": "silu",
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "head_dim": 128,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "max_position_embeddings": 40960,
            "max_window_layers": 36,
            "num_attention_heads": 32,
            "num_hidden_layers": 36,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "vocab_size": 151936,
        },
    ),
    ModelShape(
        "gemma-3-1b",
        "google/gemma-3-1b-pt",
        {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "attention_bias": False,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "hidden_activation": "gelu_pytorch_tanh",
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
            "head_dim": 256,
            "hidden_size": 1152,
            "intermediate_size": 6912,
            "max_position_embeddings": 32768,
            "num_attention_heads": 4,
            "num_hidden_layers": 26,
            "num_key_value_heads": 1,
            "query_pre_attn_scalar": 256,
            "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000.0,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            # Five local layers (window 512) to every global one.
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "tie_word_embeddings": True,
            "vocab_size": 262144,
        },
    ),
    ModelShape(
        "mixtral-8x7b",
        "mistralai/Mixtral-8x7B-v0.1",
        {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "max_position_embeddings": 32768,
            "num_attention_heads": 32,
            "num_experts_per_tok": 2,
            "num_hidden_layers": 32,
            "num_key_value_heads": 8,
            "num_local_experts": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "vocab_size": 32000,
        },
    ),
)

SHAPES: dict[str, ModelShape] = {shape.name: shape for shape in _SHAPES}


def describe_shapes() -> str:
    """One line per built-in shape, for error messages and documentation."""
    return "\n".join(f"  {name}: {shape.description}" for name, shape in SHAPES.items())


def shape_config_path(shape: ModelShape, root: Path | None = None) -> Path:
    """The shape's `config.json` in the cache, written on first use."""
    text = json.dumps(shape.config, indent=2, sort_keys=True) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    target = (root or cache_dir()) / "shapes" / f"{shape.name}-{digest}"
    folder = publish_dir(target, lambda tmp: (tmp / "config.json").write_text(text))
    return folder / "config.json"

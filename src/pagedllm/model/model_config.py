"""What the engine needs to know about a model, read from its config (or GGUF metadata).

For a GGUF file the config is parsed by transformers from the GGUF metadata once (seconds) and
cached as `config.json` under `<cache>/converted/<key>/config/`, so later starts read JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig

from pagedllm.model.layers.quantization import scheme_for
from pagedllm.model.loader.cache import converted_dir, publish_dir
from pagedllm.model.loader.gguf_reader import GGUFFile
from pagedllm.model.loader.resolve import ResolvedModel
from pagedllm.model.registry import ensure_supported

# GGUF metadata keys naming tokens that end generation.
_GGUF_EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


@dataclass
class ModelConfig:
    """A resolved model's shape, limits and special tokens; `hf_config` keeps everything else."""

    resolved: ResolvedModel
    hf_config: PretrainedConfig
    architecture: str
    vocab_size: int
    max_position_embeddings: int
    eos_token_ids: frozenset[int]
    bos_token_id: int | None
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    # Per layer: the sliding attention window, or None for full attention.
    sliding_windows: tuple[int | None, ...]
    # Weight-only quantization applied at load: None, "int8", "int4" or "int4-g128" (layers/quantization/).
    quantization: str | None = None

    @classmethod
    def from_resolved(
        cls, resolved: ResolvedModel, cache_dir: Path | None = None, quantization: str | None = None
    ) -> ModelConfig:
        """Read the config of an HF folder, a GGUF file or a dummy model's config file; raises
        for unsupported architectures."""
        if resolved.format == "gguf":
            hf_config = _gguf_hf_config(resolved.path, cache_dir)
            extra_eos = _gguf_eos_ids(resolved.path)
        else:
            # An HF folder, or (dummy) a config file: transformers reads either.
            hf_config = AutoConfig.from_pretrained(resolved.path)
            extra_eos = _generation_eos_ids(resolved.folder) if resolved.folder else set()
        return cls.from_hf_config(resolved, hf_config, extra_eos, quantization)

    @classmethod
    def from_hf_config(
        cls,
        resolved: ResolvedModel,
        hf_config: PretrainedConfig,
        extra_eos: set[int] = frozenset(),
        quantization: str | None = None,
    ) -> ModelConfig:
        scheme_for(quantization)  # raises for unknown methods
        architecture = architecture_of(hf_config)
        ensure_supported(architecture)
        # A multimodal config keeps its language model's shape in a text sub-config.
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        eos = _as_ids(getattr(hf_config, "eos_token_id", None)) | _as_ids(getattr(text, "eos_token_id", None))
        bos = getattr(hf_config, "bos_token_id", None)
        return cls(
            resolved=resolved,
            hf_config=hf_config,
            architecture=architecture,
            vocab_size=text.vocab_size,
            max_position_embeddings=text.max_position_embeddings,
            eos_token_ids=frozenset(eos | set(extra_eos)),
            bos_token_id=bos if bos is not None else getattr(text, "bos_token_id", None),
            hidden_size=text.hidden_size,
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim=head_dim_of(text),
            sliding_windows=tuple(sliding_windows_of(text)),
            quantization=None if quantization in (None, "none") else quantization,
        )

    @property
    def eos_token_id(self) -> int | None:
        """The primary end-of-sequence id (the config's first), for code that takes a single id."""
        configured = _as_list(getattr(self.hf_config, "eos_token_id", None))
        return configured[0] if configured else min(self.eos_token_ids, default=None)

    def kv_bytes_per_token(self, dtype: torch.dtype, tp_size: int = 1) -> int:
        """Bytes of K and V one token occupies across all layers (on one tensor-parallel rank)."""
        kv_heads = max(1, self.num_kv_heads // tp_size)
        return 2 * self.num_layers * kv_heads * self.head_dim * dtype.itemsize


def architecture_of(hf_config: PretrainedConfig) -> str:
    """The config's `architectures[0]`, or the causal-LM class transformers pairs with its model_type."""
    if getattr(hf_config, "architectures", None):
        return hf_config.architectures[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(hf_config.model_type, hf_config.model_type)


def head_dim_of(hf_config: PretrainedConfig) -> int:
    """The attention head size: `head_dim` when the config has one, else hidden_size / heads."""
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def rope_parameters_of(hf_config: PretrainedConfig) -> dict:
    """rope type, theta and scaling as one dict, from `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
    params = dict(
        getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    )
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        params.setdefault("original_max_position_embeddings", hf_config.max_position_embeddings)
    return params


def sliding_windows_of(hf_config: PretrainedConfig) -> list[int | None]:
    """Per layer window: every layer for Mistral-style configs, those typed 'sliding_attention' otherwise."""
    window = getattr(hf_config, "sliding_window", None)
    layers = hf_config.num_hidden_layers
    if window is None:
        return [None] * layers
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types:
        return [window if kind == "sliding_attention" else None for kind in layer_types]
    return [window] * layers


def _gguf_hf_config(path: Path, cache_dir: Path | None) -> PretrainedConfig:
    def convert(folder: Path) -> None:
        AutoConfig.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)

    folder = publish_dir(converted_dir(path, cache_dir) / "config", convert)
    return AutoConfig.from_pretrained(folder)


def _gguf_eos_ids(path: Path) -> set[int]:
    metadata = GGUFFile(path).metadata
    return {int(metadata[key]) for key in _GGUF_EOS_KEYS if key in metadata}


def _generation_eos_ids(folder: Path) -> set[int]:
    generation = folder / "generation_config.json"
    if not generation.is_file():
        return set()
    return _as_ids(json.loads(generation.read_text()).get("eos_token_id"))


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def _as_ids(ids) -> set[int]:
    return set(_as_list(ids))

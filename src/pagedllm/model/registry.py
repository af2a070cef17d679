"""Architecture name (as in a config's `architectures`) -> the model class implementing it.

Classes are imported on first use, so listing an architecture costs nothing until it is loaded.
"""

from __future__ import annotations

import importlib

from torch import nn

# architecture -> (module under pagedllm.model.models, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "Qwen2ForCausalLM"),
    "Gemma3ForCausalLM": ("gemma3", "Gemma3ForCausalLM"),
    "Gemma3ForConditionalGeneration": ("gemma3", "Gemma3ForConditionalGeneration"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "Phi3ForCausalLM": ("phi3", "Phi3ForCausalLM"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel"),
    "MixtralForCausalLM": ("mixtral", "MixtralForCausalLM"),
    "Qwen2MoeForCausalLM": ("qwen2_moe", "Qwen2MoeForCausalLM"),
}


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no implementation here; the message lists those that do."""


def supported_architectures() -> list[str]:
    """Architecture names `get_model_class` accepts."""
    return sorted(_MODELS)


def ensure_supported(architecture: str) -> None:
    """Raise UnsupportedArchitectureError unless `architecture` is implemented."""
    if architecture not in _MODELS:
        raise UnsupportedArchitectureError(
            f"model architecture {architecture!r} is not supported; supported architectures: "
            + ", ".join(supported_architectures())
        )


def get_model_class(architecture: str) -> type[nn.Module]:
    """The class implementing `architecture`."""
    ensure_supported(architecture)
    module_name, class_name = _MODELS[architecture]
    module = importlib.import_module(f"pagedllm.model.models.{module_name}")
    return getattr(module, class_name)

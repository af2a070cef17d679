"""Architecture lookup and the error for architectures that are not implemented."""

from __future__ import annotations

import pytest
import torch
import transformers

from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.models.llama import LlamaForCausalLM, Qwen2ForCausalLM
from pagedllm.model.registry import UnsupportedArchitectureError, get_model_class, supported_architectures


def test_supported_architectures_map_to_classes():
    assert get_model_class("LlamaForCausalLM") is LlamaForCausalLM
    assert get_model_class("Qwen2ForCausalLM") is Qwen2ForCausalLM
    assert {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"} <= set(supported_architectures())


@pytest.mark.parametrize(
    "architecture",
    [
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "GPT2LMHeadModel",
        "MixtralForCausalLM",
        "Qwen2MoeForCausalLM",
    ],
)
def test_newer_architectures_are_registered(architecture):
    assert architecture in supported_architectures()
    assert get_model_class(architecture).__name__ == architecture


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=64
    )
    transformers.GPTNeoXForCausalLM(config).to(torch.float32).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as info:
        ModelConfig.from_resolved(resolve_model(str(tmp_path)))
    message = str(info.value)
    assert "'GPTNeoXForCausalLM'" in message
    for name in supported_architectures():
        assert name in message
    assert isinstance(info.value, ValueError)

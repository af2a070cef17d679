"""Tiny random-weight checkpoints saved with transformers, and the real SmolLM2 alias."""

from __future__ import annotations

import pytest
import transformers

import tiny_models
from pagedllm.model.loader.resolve import resolve_model

SMOLLM2 = "smollm2-135m-instruct"

_BASE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)

TINY_CONFIGS = {
    "llama": (transformers.LlamaConfig, dict(_BASE, tie_word_embeddings=False)),
    # head size 24 (not a multiple of 32), tied embeddings, Llama 3.1 rope scaling that bends
    # frequencies inside the prompt lengths used here.
    "llama3": (
        transformers.LlamaConfig,
        dict(
            _BASE,
            hidden_size=96,
            head_dim=24,
            num_hidden_layers=2,
            tie_word_embeddings=True,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # A window shorter than the prompts, so the sliding mask matters.
    "mistral": (transformers.MistralConfig, dict(_BASE, num_key_value_heads=1, sliding_window=6)),
    "qwen2": (transformers.Qwen2Config, dict(_BASE, num_hidden_layers=2, tie_word_embeddings=True)),
}


def save_tiny_model(kind: str, folder) -> None:
    config_class, kwargs = TINY_CONFIGS[kind]
    tiny_models.save_tiny(config_class(**kwargs), folder, seed=1234)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """tiny_model_dir(kind) -> folder with config.json + model.safetensors (built once per kind)."""
    built = {}

    def get(kind: str):
        if kind not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            save_tiny_model(kind, folder)
            built[kind] = folder
        return built[kind]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2 GGUF, fetched once into the pagedllm cache."""
    return resolve_model(SMOLLM2)

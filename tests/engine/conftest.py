"""Tiny random checkpoints shared by the engine tests (built once per session)."""

from __future__ import annotations

import pytest

import tiny_models


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.llama_config(), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    return tiny_models.save_tiny(
        tiny_models.mistral_config(), tmp_path_factory.mktemp("tiny-mistral"), seed=1
    )


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.qwen2_config(), tmp_path_factory.mktemp("tiny-qwen2"), seed=2)

"""Tiny random checkpoints for the GPU tests, built once per session (no downloads)."""

from __future__ import annotations

import pytest
from gpu_models import TINY

import tiny_models


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Builds a tiny model folder on first use: `tiny_dirs("llama")`."""
    built = {}

    def folder(kind: str):
        if kind not in built:
            config, seed = TINY[kind]
            built[kind] = tiny_models.save_tiny(config(), tmp_path_factory.mktemp(f"gpu-{kind}"), seed=seed)
        return built[kind]

    return folder

"""Model string resolution: local path, then alias, then hub id, with a clear error otherwise."""

from __future__ import annotations

import shutil

import pytest

from pagedllm.model.loader.aliases import ALIASES
from pagedllm.model.loader.resolve import ModelNotFoundError, resolve_model


def test_local_hf_folder(tiny_model_dir):
    folder = tiny_model_dir("llama")
    resolved = resolve_model(str(folder))
    assert (resolved.format, resolved.path, resolved.name) == ("hf", folder.resolve(), str(folder))


def test_local_gguf_file_and_folder_with_one_gguf(smollm2, tmp_path):
    assert resolve_model(str(smollm2.path)).format == "gguf"
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "model.gguf").symlink_to(smollm2.path)
    assert resolve_model(str(folder)).path == (folder / "model.gguf").resolve()


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "a.gguf").touch()
    (tmp_path / "b.gguf").touch()
    with pytest.raises(ModelNotFoundError, match="2 .gguf files"):
        resolve_model(str(tmp_path))
    (tmp_path / "notes.txt").touch()
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        resolve_model(str(tmp_path / "notes.txt"))


def test_alias_resolves_to_the_cached_gguf(smollm2):
    assert smollm2.format == "gguf"
    assert smollm2.path.name == ALIASES["smollm2-135m-instruct"].filename
    assert smollm2.path.stat().st_size == 98_362_432


def test_local_path_wins_over_an_alias(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir("llama"), tmp_path / "smollm2-135m-instruct")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("smollm2-135m-instruct").format == "hf"


def test_unknown_hub_id_offline_names_every_form(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("pagedllm-tests/no-such-model")
    message = str(info.value)
    assert "'pagedllm-tests/no-such-model'" in message and "hub lookup failed" in message
    assert "local path" in message and "hub id" in message
    for alias in ALIASES:
        assert alias in message


def test_model_not_found_is_a_value_error():
    with pytest.raises(ValueError, match="not a valid hub id"):
        resolve_model("no such model!")

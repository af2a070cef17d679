"""Turn the user's `--model` string into a model on local disk.

Precedence: an existing local path, then a built-in alias, then a Hugging Face hub id. With the
dummy load format only a config is needed: a config JSON file, a folder holding `config.json`,
or a built-in shape name (dummy_shapes.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pagedllm.model.loader.aliases import ALIASES, describe_aliases
from pagedllm.model.loader.dummy_shapes import SHAPES, describe_shapes, shape_config_path
from pagedllm.model.loader.fetch import fetch_alias

ModelFormat = Literal["hf", "gguf", "dummy"]

# owner/name (or a bare legacy name) as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "tokenizer*"]


class ModelNotFoundError(ValueError):
    """The model string is neither a usable local path, an alias, nor a reachable hub id."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model on disk: a Hugging Face folder (`format='hf'`), a single `.gguf` file, or a config
    JSON file whose weights are to be drawn at random (`format='dummy'`)."""

    format: ModelFormat
    path: Path
    name: str

    @property
    def folder(self) -> Path | None:
        """The folder whose companion files (generation config, tokenizer) belong to the model:
        an HF folder, or a dummy config's folder when the file is a `config.json`."""
        if self.format == "hf":
            return self.path
        if self.format == "dummy" and self.path.name == "config.json":
            return self.path.parent
        return None


def resolve_model(model: str, cache_dir: Path | None = None, load_format: str = "auto") -> ResolvedModel:
    """Find `model` locally, as an alias (fetched once into the cache) or on the hub; with
    `load_format="dummy"`, find its config only (a path or a built-in shape name)."""
    if load_format == "dummy":
        return _resolve_dummy(model, cache_dir)
    local = Path(model).expanduser()
    if local.exists():
        return _resolve_local(local, model)
    alias = ALIASES.get(model)
    if alias is not None:
        return ResolvedModel("gguf", fetch_alias(alias, cache_dir), model)
    return _resolve_hub(model)


def _resolve_local(path: Path, name: str) -> ResolvedModel:
    if path.is_file():
        if path.suffix == ".gguf":
            return ResolvedModel("gguf", path.resolve(), name)
        raise ModelNotFoundError(f"{path} is a file but not a .gguf model file")
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return ResolvedModel("hf", path.resolve(), name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel("gguf", ggufs[0].resolve(), name)
    found = f"{len(ggufs)} .gguf files" if ggufs else "no config.json with *.safetensors and no .gguf file"
    raise ModelNotFoundError(
        f"{path} is a folder but not a model: it holds {found}. Expected a Hugging Face folder "
        "(config.json + *.safetensors), a folder with exactly one .gguf file, or a .gguf file."
    )


def _resolve_dummy(model: str, cache_dir: Path | None) -> ResolvedModel:
    local = Path(model).expanduser()
    if local.is_file() and local.suffix == ".json":
        return ResolvedModel("dummy", local.resolve(), model)
    if local.is_dir() and (local / "config.json").is_file():
        return ResolvedModel("dummy", (local / "config.json").resolve(), model)
    shape = SHAPES.get(model)
    if shape is not None:
        return ResolvedModel("dummy", shape_config_path(shape, cache_dir), model)
    if local.exists():
        reason = f"{local} is neither a .json config file nor a folder holding config.json"
    else:
        reason = "no such local path, and not a built-in shape name"
    raise ModelNotFoundError(
        f"Cannot use {model!r} with --load-format dummy: {reason}.\n"
        "Give a config.json file, a folder holding config.json (weights are not needed), "
        f"or a built-in shape:\n{describe_shapes()}"
    )


def _resolve_hub(model: str) -> ResolvedModel:
    reason = "it is not a valid hub id"
    if _HUB_ID.match(model):
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=model, allow_patterns=_HUB_FILES))
            return _resolve_local(folder, model)
        except Exception as exc:  # offline, unknown repo, gated, no safetensors: all mean "not found"
            reason = f"the hub lookup failed ({type(exc).__name__}: {_first_line(exc)})"
    raise ModelNotFoundError(
        f"Cannot find model {model!r}: no such local path, not a built-in alias, and {reason}.\n"
        "Give one of:\n"
        "  a local path: a Hugging Face folder (config.json + *.safetensors) or a .gguf file\n"
        "  a Hugging Face hub id such as 'owner/name' (needs network access)\n"
        f"  a built-in alias:\n{describe_aliases()}"
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"

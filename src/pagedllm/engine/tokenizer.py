"""Tokenizers for resolved models, with GGUF tokenizers converted once and cached.

transformers builds a GGUF's tokenizer from the vocabulary in its metadata, which takes seconds
(a 262k vocabulary takes over ten); the result is saved with `save_pretrained` under
`<cache>/converted/<key>/tokenizer/`, chat template included, and loaded from there afterwards.

Which model's tokenizer serves an engine is decided in one place, `tokenizer_model`, for the
front end and the core alike: `--tokenizer` when given, else the model's own; a dummy model
(a config without weights) uses the tokenizer beside its config, else the default model's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pagedllm.config import EngineConfig
from pagedllm.engine.arg_utils import DEFAULT_MODEL
from pagedllm.model.loader.cache import converted_dir, publish_dir
from pagedllm.model.loader.resolve import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

# Any of these in a folder makes it loadable with AutoTokenizer.from_pretrained.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def tokenizer_model(config: EngineConfig, resolved: ResolvedModel) -> ResolvedModel:
    """The model whose tokenizer serves `config` (whose model resolved to `resolved`)."""
    if config.tokenizer is not None:
        return _resolve_tokenizer_name(config.tokenizer)
    if resolved.format != "dummy":
        return resolved
    folder = resolved.folder
    if folder is not None and has_tokenizer_files(folder):
        return ResolvedModel("hf", folder, resolved.name)
    logger.info(
        "tokenizer: %s has no tokenizer files beside its config, so the default model's (%s) is used; "
        "--tokenizer chooses another",
        resolved.name,
        DEFAULT_MODEL,
    )
    return resolve_model(DEFAULT_MODEL)


def has_tokenizer_files(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer (a Hugging Face tokenizer file)."""
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _resolve_tokenizer_name(name: str) -> ResolvedModel:
    # A folder holding only a tokenizer is no model, but is a tokenizer's model all the same.
    local = Path(name).expanduser()
    if local.is_dir() and has_tokenizer_files(local):
        return ResolvedModel("hf", local.resolve(), name)
    return resolve_model(name)


def load_tokenizer(resolved: ResolvedModel, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer: from the HF folder, or from the GGUF (converted once, then cached).

    A dummy model has none of its own: pass `tokenizer_model(config, resolved)` instead."""
    if resolved.format == "dummy":
        raise ValueError(f"{resolved.name} (load format dummy) has no tokenizer; see tokenizer_model()")
    if resolved.format == "hf":
        return AutoTokenizer.from_pretrained(resolved.path)
    folder = converted_tokenizer_dir(resolved.path, cache_dir)
    if not (folder / "tokenizer_config.json").is_file():
        publish_dir(folder, lambda tmp: _convert_gguf_tokenizer(resolved.path, tmp))
    return AutoTokenizer.from_pretrained(folder)


def converted_tokenizer_dir(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """Where the tokenizer converted from `gguf_path` is (or will be) saved."""
    return converted_dir(gguf_path, cache_dir) / "tokenizer"


def _convert_gguf_tokenizer(gguf_path: Path, folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(folder)


def get_chat_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's chat template text, or None if it has none.

    A tokenizer may carry several named templates; the 'default' one is the chat template.
    """
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None

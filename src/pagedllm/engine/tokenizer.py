"""Tokenizers for resolved models, with GGUF tokenizers converted once and cached.

transformers builds a GGUF's tokenizer from the vocabulary in its metadata, which takes seconds
(a 262k vocabulary takes over ten); the result is saved with `save_pretrained` under
`<cache>/converted/<key>/tokenizer/`, chat template included, and loaded from there afterwards.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pagedllm.model.loader.cache import converted_dir, publish_dir
from pagedllm.model.loader.resolve import ResolvedModel


def load_tokenizer(resolved: ResolvedModel, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer: from the HF folder, or from the GGUF (converted once, then cached)."""
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

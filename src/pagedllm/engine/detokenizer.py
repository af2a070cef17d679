"""Incremental detokenization: token ids in, text deltas out, at a constant cost per step.

Decoding the whole output each step costs O(length); decoding only a short window of
tokens is enough because a token's text depends only on its neighbours. Two offsets
into the token list mark the window:

    ... | prefix_offset ........ read_offset ........ len(token_ids)
          [ text already emitted ][ tokens not yet shown as text ]

Each step decodes `[prefix_offset, read_offset)` and `[prefix_offset, end)`; the new text
is the second string minus the first. Starting the window one emitted chunk back (and,
at first, a few prompt tokens back) gives decoders that treat the first token specially,
such as SentencePiece's leading-space strip, the same context as a full decode.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass

# Prompt tokens that seed the window, so the first output token is decoded in context.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns one sequence's new token ids into new text.

    Text that ends in U+FFFD (an incomplete UTF-8 character from byte-level or
    byte-fallback tokens) is held back until later tokens complete it; `flush()` releases
    whatever is still held when the sequence ends. Concatenating every delta and the final
    flush gives `tokenizer.decode(output_ids, skip_special_tokens=...)` for byte-level BPE;
    for SentencePiece-style decoders it gives the output's text as it reads after the
    prompt (a first token "_world" keeps its space, which a lone decode would strip).

    Byte-fallback decoders (SentencePiece style, `<0xNN>` tokens) turn a whole run of byte
    tokens into U+FFFDs when any part of it is invalid, so a run is never split across
    windows: text is held while the last (non-skipped) token is a byte token. Byte-level
    BPE (GPT-2 style) needs no such rule; its invalid bytes affect only themselves.

    `spaces_between_special_tokens` only matters to HF "slow" tokenizers; fast tokenizers
    (the only kind supported here) decode special tokens through the backend as is.

    A model's vocabulary may be larger than its tokenizer's (a dummy model in another model's
    shape, or an embedding padded past the tokenizer): ids from `len(tokenizer)` on have no
    text. They render as nothing: they are kept out of the decode window, so they can neither
    fail a decoder nor split a byte run.
    """

    def __init__(
        self,
        tokenizer,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ):
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._decode = _make_decoder(tokenizer, skip_special_tokens)
        info = byte_fallback_info(tokenizer)
        self._byte_ids = info.byte_token_ids
        self._skipped_ids = info.special_token_ids if skip_special_tokens else frozenset()
        self._num_known = len(tokenizer)
        self.token_ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self._num_context = len(self.token_ids)
        self._prefix_text: str | None = None  # decode of [prefix_offset, read_offset), cached

    @property
    def output_token_ids(self) -> list[int]:
        """The output tokens seen so far that have text (without the prompt context)."""
        return self.token_ids[self._num_context :]

    def add_tokens(self, new_token_ids: list[int]) -> str:
        """Append tokens; return the text they complete (possibly empty)."""
        self.token_ids.extend(t for t in new_token_ids if t < self._num_known)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return the held-back text, incomplete characters included (call at the end)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.read_offset == len(self.token_ids):
            return ""
        if self._prefix_text is None:
            self._prefix_text = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        prefix_text = self._prefix_text
        new_text = self._decode(self.token_ids[self.prefix_offset :])
        # No growth (e.g. a skipped special token) or a dangling partial character: wait for
        # more tokens, keeping the window as is so the held tokens are decoded together.
        if len(new_text) <= len(prefix_text):
            return ""
        if not final and (new_text.endswith(_REPLACEMENT_CHAR) or self._in_byte_run()):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self._prefix_text = None
        return new_text[len(prefix_text) :]

    def _in_byte_run(self) -> bool:
        if not self._byte_ids:
            return False
        # Skipped special tokens are invisible to the decoder: look past them.
        for i in range(len(self.token_ids) - 1, self.read_offset - 1, -1):
            token = self.token_ids[i]
            if token not in self._skipped_ids:
                return token in self._byte_ids
        return False


@dataclass(frozen=True, slots=True)
class ByteFallbackInfo:
    """Ids of `<0xNN>` byte tokens (empty unless the decoder uses ByteFallback), and special ids."""

    byte_token_ids: frozenset[int]
    special_token_ids: frozenset[int]


_INFO_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def byte_fallback_info(tokenizer) -> ByteFallbackInfo:
    """Inspect a tokenizer once (cached per tokenizer object) for the byte-run rule."""
    try:
        return _INFO_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    info = ByteFallbackInfo(frozenset(), frozenset())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and b"ByteFallback" in decoder.__getstate__():
        ids = (backend.token_to_id(f"<0x{b:02X}>") for b in range(256))
        added = getattr(tokenizer, "added_tokens_decoder", {})
        info = ByteFallbackInfo(
            byte_token_ids=frozenset(i for i in ids if i is not None),
            special_token_ids=frozenset(i for i, tok in added.items() if getattr(tok, "special", False)),
        )
    # A tokenizer that cannot be weakly referenced is inspected per request: slower, still correct.
    with contextlib.suppress(TypeError):
        _INFO_CACHE[tokenizer] = info
    return info


def _make_decoder(tokenizer, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    # The Rust backend's decode skips the Python wrapper's overhead (it is what a fast
    # tokenizer's `decode` calls); no clean-up of spaces, as streamed text must not change
    # once it has been sent.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )

"""Fixtures for the tool-call and reasoning parser tests: text cut the way a real model emits it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.engine.tokenizer import load_tokenizer
from pagedllm.model.loader.resolve import resolve_model


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def token_pieces(tokenizer) -> Callable[[str], list[str]]:
    """Text -> the pieces the server streams for it: one token at a time, detokenized.

    The server's own incremental detokenizer is used, rather than diffing decodes of growing
    prefixes, because a token that ends inside a UTF-8 character decodes to U+FFFD, and a
    prefix diff would then drop or garble that character; the detokenizer holds it back.
    """

    def pieces(text: str) -> list[str]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
        out = [detok.add_tokens([token]) for token in ids]
        out.append(detok.flush())
        assert "".join(out) == text, "the tokenizer must round-trip the example"
        return out

    return pieces

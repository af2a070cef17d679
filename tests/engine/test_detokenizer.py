"""IncrementalDetokenizer: same text as a full decode, no broken characters, bounded windows."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pagedllm.engine.detokenizer import IncrementalDetokenizer

_POOL = [
    "the",
    "quick",
    "hello",
    "world",
    "café",
    "naïve",
    "世界",
    "你好",
    "🎉",
    "👍🏽",
    "😀",
    "日本語",
    " ",
    "  ",
    "\n",
    "\t",
    ",",
    ".",
    "!",
    "ß",
    "€",
    "ℕ",
    "1234",
    "x",
]


def _random_text(rng: random.Random, words: int = 30) -> str:
    return "".join(rng.choice(_POOL) + rng.choice(["", " ", ""]) for _ in range(words))


def _expected(tokenizer, prompt_ids, output_ids, skip_special_tokens=True) -> str:
    """The output's text in the context of a (cleanly decodable) prompt.

    For byte-level BPE this is just `decode(output_ids)`; SentencePiece-style decoders drop
    the leading space of the first token decoded, so a continuation keeps its space only
    when decoded after the prompt.
    """
    prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=skip_special_tokens)
    full = tokenizer.decode(prompt_ids + output_ids, skip_special_tokens=skip_special_tokens)
    assert full.startswith(prompt_text)
    return full[len(prompt_text) :]


def _stream(tokenizer, prompt_ids, output_ids, skip_special_tokens=True, chunk=1) -> list[str]:
    """Feed output ids `chunk` at a time; return every delta, the flush last."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
    deltas = [detok.add_tokens(output_ids[i : i + chunk]) for i in range(0, len(output_ids), chunk)]
    return deltas + [detok.flush()]


@pytest.fixture(scope="module")
def sp_tokenizer():
    """A tiny SentencePiece-style tokenizer (metaspace, byte fallback), trained in memory."""
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, hello there", "café naïve"] * 10
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=40)
    tok.train_from_iterator(corpus, trainer)
    # Byte fallback needs a <0xNN> token for every byte: add them as ordinary vocabulary.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(params=["smollm2", "sentencepiece"])
def tokenizer(request, sp_tokenizer):
    return request.getfixturevalue("smollm2_tokenizer") if request.param == "smollm2" else sp_tokenizer


def test_text_sequences_match_full_decode_without_broken_characters(tokenizer):
    rng = random.Random(0)
    for trial in range(40):
        prompt = tokenizer.encode(_random_text(rng, 5), add_special_tokens=False)
        text = _random_text(rng)
        output = tokenizer.encode(text, add_special_tokens=False)
        deltas = _stream(tokenizer, prompt, output, chunk=1 + trial % 3)
        assert "".join(deltas) == _expected(tokenizer, prompt, output)
        assert not any("\ufffd" in d for d in deltas), deltas


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_token_ids_match_full_decode(tokenizer, skip_special_tokens):
    rng = random.Random(1)
    vocab = len(tokenizer)
    for trial in range(60):
        # Half without a prompt (then the reference is exactly decode(output)), half after text
        # that ends in a whole token (a byte-fallback run must not straddle prompt and output).
        prompt = (
            [] if trial % 2 else tokenizer.encode(_random_text(rng, 4) + " the", add_special_tokens=False)
        )
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 60))]
        if trial % 4 == 0:  # sprinkle special tokens
            output[rng.randrange(len(output))] = tokenizer.eos_token_id
        deltas = _stream(tokenizer, prompt, output, skip_special_tokens, chunk=1 + trial % 3)
        assert "".join(deltas) == _expected(tokenizer, prompt, output, skip_special_tokens)


def test_byte_level_output_equals_full_decode(smollm2_tokenizer):
    """With byte-level BPE the prompt never changes the output's text."""
    rng = random.Random(3)
    for _ in range(40):
        prompt = smollm2_tokenizer.encode(_random_text(rng, 4), add_special_tokens=False)
        output = [rng.randrange(len(smollm2_tokenizer)) for _ in range(rng.randrange(1, 40))]
        for skip in (True, False):
            deltas = _stream(smollm2_tokenizer, prompt, output, skip)
            assert "".join(deltas) == smollm2_tokenizer.decode(output, skip_special_tokens=skip)


def test_partial_characters_are_held_until_complete(tokenizer):
    output = tokenizer.encode("ab 🎉 世界", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], True)
    emitted = ""
    for token in output:
        emitted += detok.add_tokens([token])
        assert "\ufffd" not in emitted
        assert tokenizer.decode(output).startswith(emitted)
    assert emitted + detok.flush() == tokenizer.decode(output)


def test_sentencepiece_leading_space_after_prompt(sp_tokenizer):
    prompt = sp_tokenizer.encode("hello", add_special_tokens=False)
    output = sp_tokenizer.encode("hello world", add_special_tokens=False)[len(prompt) :]
    assert sp_tokenizer.convert_ids_to_tokens(output[0]).startswith("▁")
    # Decoded alone the first token would lose its space; in context it keeps it.
    assert "".join(_stream(sp_tokenizer, prompt, output)) == " world"


def test_dangling_bytes_are_flushed_at_the_end(smollm2_tokenizer):
    full = smollm2_tokenizer.encode("ok 🎉", add_special_tokens=False)
    cut = full[:-1]  # the emoji's last byte never arrives
    detok = IncrementalDetokenizer(smollm2_tokenizer, [], True)
    emitted = detok.add_tokens(cut)
    assert "\ufffd" not in emitted
    assert emitted + detok.flush() == smollm2_tokenizer.decode(cut)


def test_decode_window_stays_small(smollm2_tokenizer):
    detok = IncrementalDetokenizer(smollm2_tokenizer, list(range(100, 400)), True)
    sizes = []
    decode = detok._decode
    detok._decode = lambda ids: sizes.append(len(ids)) or decode(ids)
    output = smollm2_tokenizer.encode(_random_text(random.Random(2), 400), add_special_tokens=False)
    for token in output:
        detok.add_tokens([token])
    assert len(output) > 500
    assert max(sizes) <= 16
    assert detok.output_token_ids == output

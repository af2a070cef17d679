"""GGUF tokenizers are converted once, cached, and keep the chat template."""

from __future__ import annotations

from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

import pagedllm.engine.tokenizer as tokenizer_module
from pagedllm.engine.tokenizer import converted_tokenizer_dir, get_chat_template, load_tokenizer
from pagedllm.model.loader.gguf_reader import GGUFFile
from pagedllm.model.loader.resolve import ResolvedModel


def test_second_load_uses_the_converted_tokenizer(smollm2, tmp_path, monkeypatch):
    first = load_tokenizer(smollm2, cache_dir=tmp_path)
    folder = converted_tokenizer_dir(smollm2.path, tmp_path)
    assert (folder / "tokenizer_config.json").is_file()

    def no_conversion(*args):
        raise AssertionError("the GGUF tokenizer was converted again")

    monkeypatch.setattr(tokenizer_module, "_convert_gguf_tokenizer", no_conversion)
    second = load_tokenizer(smollm2, cache_dir=tmp_path)

    expected = GGUFFile(smollm2.path).metadata["tokenizer.chat_template"]
    assert get_chat_template(first) == expected
    assert get_chat_template(second) == expected
    text = "Hello, world! The capital of France is"
    assert second(text).input_ids == first(text).input_ids
    assert (second.eos_token_id, second.bos_token_id) == (2, 1)
    messages = [{"role": "user", "content": "hi"}]
    rendered = second.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")


def test_hf_folder_tokenizer_without_a_template(tmp_path):
    vocab = models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab)).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(ResolvedModel("hf", tmp_path, "local"))
    assert get_chat_template(tokenizer) is None
    assert tokenizer("a").input_ids == [0]

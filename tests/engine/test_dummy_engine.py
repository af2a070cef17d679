"""The engine on dummy weights: which tokenizer serves it, and a named shape generating offline."""

from __future__ import annotations

import json
import math

import pytest

import tiny_models
from pagedllm import LLM, SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.engine.arg_utils import DEFAULT_MODEL
from pagedllm.engine.tokenizer import load_tokenizer, tokenizer_model
from pagedllm.model.loader.resolve import resolve_model

SHAPE = "llama-3.2-1b"


def _choice(model: str, **config):
    config = EngineConfig(model=model, **config)
    return tokenizer_model(config, resolve_model(model, load_format=config.load_format))


def test_a_shape_uses_the_default_models_tokenizer(caplog):
    with caplog.at_level("INFO", logger="pagedllm.engine.tokenizer"):
        choice = _choice(SHAPE, load_format="dummy")
    assert (choice.name, choice.format) == (DEFAULT_MODEL, "gguf")
    assert f"the default model's ({DEFAULT_MODEL}) is used" in caplog.text


def test_a_config_folder_uses_its_own_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(tiny_models.llama_config().to_json_string())
    tiny_models.build_tokenizer().save_pretrained(tmp_path)
    for given in (tmp_path, tmp_path / "config.json"):
        choice = _choice(str(given), load_format="dummy")
        assert (choice.format, choice.path) == ("hf", tmp_path)
    assert len(load_tokenizer(choice)) == len(tiny_models.build_tokenizer())


def test_the_tokenizer_option_wins_for_every_load_format(tmp_path, tiny_llama_dir):
    tokenizer_only = tmp_path / "tok"
    tiny_models.build_tokenizer().save_pretrained(tokenizer_only)
    for model, load_format in ((SHAPE, "dummy"), (str(tiny_llama_dir), "auto")):
        choice = _choice(model, load_format=load_format, tokenizer=str(tokenizer_only))
        assert (choice.format, choice.path) == ("hf", tokenizer_only)
        choice = _choice(model, load_format=load_format, tokenizer=DEFAULT_MODEL)
        assert (choice.name, choice.format) == (DEFAULT_MODEL, "gguf")
    assert _choice(str(tiny_llama_dir)).path == tiny_llama_dir.resolve()
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_tokenizer(resolve_model(SHAPE, load_format="dummy"))


def test_a_named_shape_generates_offline_past_its_tokenizers_vocabulary():
    """Llama 3.2 1B's shape (vocabulary 128,256) in bf16 with SmolLM2's tokenizer (49,152)."""
    llm = LLM(SHAPE, load_format="dummy", dtype="bfloat16", max_model_len=128, num_kv_blocks=8, seed=3)
    tokenizer = llm.get_tokenizer()
    assert len(tokenizer) == 49152
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2)
    outputs = [o.outputs[0] for o in llm.generate(["Hello, my name is", "The capital of France is"], params)]
    ids = [t for o in outputs for t in o.token_ids]
    assert len(ids) == 12 and all(0 <= t < 128256 for t in ids)
    # Random weights spread over the whole vocabulary: some ids have no text (a 0.4^12 chance not).
    assert any(t >= len(tokenizer) for t in ids)
    for output in outputs:
        assert output.text == tokenizer.decode([t for t in output.token_ids if t < len(tokenizer)])
        assert all(
            math.isfinite(entry.logprob) for position in output.logprobs for entry in position.values()
        )


def test_shape_config_is_plain_json_in_the_cache():
    resolved = resolve_model(SHAPE, load_format="dummy")
    assert json.loads(resolved.path.read_text())["num_hidden_layers"] == 16

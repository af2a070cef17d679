"""The real SmolLM2 GGUF (Q4_1) through our GGUF loader vs transformers' own GGUF loading."""

from __future__ import annotations

import gguf
import numpy as np
import torch
import transformers
from paged_batch import assign_blocks, bind_kv_caches, run_step

from pagedllm.engine.tokenizer import load_tokenizer
from pagedllm.model.loader.gguf import unpermute_rows
from pagedllm.model.loader.gguf_reader import GGUFFile
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model

PROMPT = "The quick brown fox jumps over the lazy dog, and then it ran into the dark forest to find its way home again."


def test_logits_match_transformers_gguf(smollm2):
    # The default cache: after the first run the config and tokenizer come converted.
    config = ModelConfig.from_resolved(smollm2)
    ids = load_tokenizer(smollm2)(PROMPT).input_ids[:20]
    assert len(ids) == 20

    ours = load_model(config, torch.device("cpu"), torch.float32)
    tables = assign_blocks([len(ids)], 16)
    bind_kv_caches(ours, len(tables[0]), 16)
    (logits,) = run_step(ours, [ids], [len(ids)], tables, 16)

    reference = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.path.parent, gguf_file=smollm2.path.name, dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([ids])).logits[0].float()
    diff = (torch.log_softmax(logits, -1) - torch.log_softmax(expected, -1)).abs().max().item()
    assert diff < 1e-3, f"max |log-softmax difference| {diff:.2e}"


def test_config_from_gguf_metadata(smollm2, tmp_path):
    config = ModelConfig.from_resolved(smollm2, cache_dir=tmp_path)
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert (config.head_dim, config.vocab_size, config.max_position_embeddings) == (64, 49152, 8192)
    assert config.eos_token_ids == {2} and config.eos_token_id == 2 and config.bos_token_id == 1
    assert config.hf_config.tie_word_embeddings
    # The second read comes from the converted config.json and agrees.
    again = ModelConfig.from_resolved(smollm2, cache_dir=tmp_path)
    assert again.hf_config.to_dict() == config.hf_config.to_dict()


def test_reader_agrees_with_gguf_package(smollm2):
    ours = GGUFFile(smollm2.path)
    theirs = gguf.GGUFReader(smollm2.path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, other in zip(ours.tensors, theirs.tensors):
        assert (mine.qtype, mine.offset, mine.nbytes) == (other.tensor_type, other.data_offset, other.n_bytes)
    assert ours.metadata["llama.attention.head_count_kv"] == 3
    assert ours.metadata["tokenizer.chat_template"].startswith("{% for message in messages %}")
    # Long arrays (the vocabulary) are stepped over, not decoded.
    assert "tokenizer.ggml.tokens" not in ours.metadata


def test_unpermute_inverts_the_converter_permutation():
    def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
        # What the converter does: within each head, interleave the two halves' rows.
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    weight = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    for heads in (6, 2):
        assert np.array_equal(unpermute_rows(llama_cpp_permute(weight, heads), heads), weight)

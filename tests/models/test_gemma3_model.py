"""Gemma 3 against transformers: tiny random checkpoints step by step, GGUF names, the real config.

The tiny model slides layers 0, 1 and 3 over 8 positions (layer 2 is global, with linearly
scaled rope), uses one KV head of size 24 and a query_pre_attn_scalar of 32, so a wrong
window, rope base, norm or scale shows in the logits of prompts longer than the window.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from paged_batch import (
    assert_close,
    assign_blocks,
    bind_kv_caches,
    build_step,
    check_prefill_then_decode,
    reference_logprobs,
    run_step,
)

import tiny_models
from pagedllm.model.loader.gguf import gguf_to_hf_name, iterate_gguf_weights
from pagedllm.model.loader.gguf_reader import GGUFFile
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.model.models.gemma3 import layer_types_of, rope_parameters_for

BLOCK_SIZE = 4
PROMPT_LENS = (5, 17, 11)

VARIANTS = {
    "plain": {},
    # transformers' Gemma 3 applies the final logit cap but ignores attn_logit_softcapping; the
    # attention cap is checked against plain math below.
    "softcap": {"final_logit_softcapping": 3.0},
}


@pytest.fixture(scope="module")
def gemma3_pair(tmp_path_factory):
    built = {}

    def get(variant: str):
        if variant not in built:
            folder = tmp_path_factory.mktemp(f"tiny-gemma3-{variant}")
            tiny_models.save_tiny(tiny_models.gemma3_config(**VARIANTS[variant]), folder, seed=3)
            config = ModelConfig.from_resolved(resolve_model(str(folder)))
            ours = load_model(config, torch.device("cpu"), torch.float32)
            reference = transformers.AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, attn_implementation="eager"
            ).eval()
            built[variant] = config, ours, reference
        return built[variant]

    return get


def prompts(vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_then_decode_match_transformers(variant, gemma3_pair):
    config, ours, reference = gemma3_pair(variant)
    assert config.architecture == "Gemma3ForCausalLM"
    assert config.sliding_windows == (8, 8, None, 8)
    batch = prompts(config.vocab_size)
    check_prefill_then_decode(ours, reference, batch, BLOCK_SIZE, variant)


def test_chunk_after_cached_context_longer_than_the_window(gemma3_pair):
    config, ours, reference = gemma3_pair("plain")
    a, b, c = prompts(config.vocab_size)
    tables = assign_blocks([len(a) + 1, len(b) + 1, len(c)], BLOCK_SIZE)
    bind_kv_caches(ours, sum(len(t) for t in tables), BLOCK_SIZE)
    run_step(ours, [a, b[:10], c[:6]], [len(a), 10, 6], tables, BLOCK_SIZE)
    # a decodes; b's second chunk starts 10 tokens in (beyond the window); c's after 6.
    chunks = [[a[0]], b[10:], c[6:]]
    step = run_step(ours, chunks, [len(a) + 1, len(b), len(c)], tables, BLOCK_SIZE, num_decodes=1)
    assert_close(step[0], reference_logprobs(reference, a + [a[0]])[-1:], "decode a")
    assert_close(step[1], reference_logprobs(reference, b)[10:], "second chunk of b")
    assert_close(step[2], reference_logprobs(reference, c)[6:], "second chunk of c")


def test_multimodal_checkpoint_runs_its_language_model(tmp_path):
    """A saved Gemma3ForConditionalGeneration: its text tower gives transformers' text-only logits."""
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    mm_config = transformers.Gemma3Config(
        text_config=tiny_models.gemma3_config().to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=511,
    )
    torch.manual_seed(0)
    reference = transformers.Gemma3ForConditionalGeneration(mm_config).to(torch.float32).eval()
    tiny_models.randomize(reference, seed=4)
    reference.save_pretrained(tmp_path)
    config = ModelConfig.from_resolved(resolve_model(str(tmp_path)))
    assert config.architecture == "Gemma3ForConditionalGeneration"
    assert (config.vocab_size, config.num_layers, config.head_dim) == (512, 4, 24)
    assert config.sliding_windows == (8, 8, None, 8)
    ours = load_model(config, torch.device("cpu"), torch.float32)
    ids = prompts(config.vocab_size)[1]
    tables = assign_blocks([len(ids)], BLOCK_SIZE)
    bind_kv_caches(ours, len(tables[0]), BLOCK_SIZE)
    (logits,) = run_step(ours, [ids], [len(ids)], tables, BLOCK_SIZE)
    assert_close(logits, reference_logprobs(reference, ids), "multimodal checkpoint, text prompt")


def test_layer_types_and_rope_of_older_configs():
    old = SimpleNamespace(num_hidden_layers=7, sliding_window_pattern=3, rope_theta=5e5)
    assert layer_types_of(old) == ["sliding_attention", "sliding_attention", "full_attention"] * 2 + [
        "sliding_attention"
    ]
    assert rope_parameters_for(old, "sliding_attention") == {"rope_theta": 10000.0, "rope_type": "default"}
    old.rope_scaling = {"rope_type": "linear", "factor": 8.0}
    assert rope_parameters_for(old, "full_attention") == {
        "rope_type": "linear",
        "factor": 8.0,
        "rope_theta": 5e5,
    }


def test_gguf_names_for_gemma3():
    assert (
        gguf_to_hf_name("blk.3.ffn_norm.weight", "gemma3")
        == "model.layers.3.pre_feedforward_layernorm.weight"
    )
    assert gguf_to_hf_name("blk.3.ffn_norm.weight") == "model.layers.3.post_attention_layernorm.weight"
    assert gguf_to_hf_name("blk.0.post_attention_norm.weight", "gemma3") == (
        "model.layers.0.post_attention_layernorm.weight"
    )
    assert (
        gguf_to_hf_name("blk.0.post_ffw_norm.weight", "gemma3")
        == "model.layers.0.post_feedforward_layernorm.weight"
    )
    assert gguf_to_hf_name("blk.1.attn_q_norm.weight", "gemma3") == "model.layers.1.self_attn.q_norm.weight"
    assert gguf_to_hf_name("blk.1.attn_k_norm.weight", "gemma3") == "model.layers.1.self_attn.k_norm.weight"


@pytest.fixture(scope="module")
def gemma3_gguf():
    return resolve_model("gemma-3-270m")


def test_real_gguf_config_and_norm_weights(gemma3_gguf):
    config = ModelConfig.from_resolved(gemma3_gguf)
    assert config.architecture == "Gemma3ForCausalLM"
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (18, 640, 4, 1)
    assert (config.head_dim, config.vocab_size, config.bos_token_id) == (256, 262144, 2)
    assert 1 in config.eos_token_ids
    # Not in the GGUF: five sliding layers to one global, local rope base 10,000.
    assert config.sliding_windows == ((512,) * 5 + (None,)) * 3
    assert rope_parameters_for(config.hf_config, "sliding_attention")["rope_theta"] == 10000.0
    assert rope_parameters_for(config.hf_config, "full_attention")["rope_theta"] == 1e6
    # Norm weights lose the folded-in 1 (GGUF F32 tensors, cheap to read).
    gguf_file = GGUFFile(gemma3_gguf.path)
    stored = next(t for t in gguf_file.tensors if t.name == "blk.0.attn_q_norm.weight")
    raw = np.frombuffer(bytes(gguf_file.raw(stored)), dtype=np.float32)
    loaded = dict(_first_tensors(gemma3_gguf.path, {"model.layers.0.self_attn.q_norm.weight"}))
    assert np.allclose(loaded["model.layers.0.self_attn.q_norm.weight"].numpy(), raw - 1.0)


def _first_tensors(path, names: set[str]):
    for name, tensor in iterate_gguf_weights(path):
        if name in names:
            yield name, tensor
            names = names - {name}
            if not names:
                return


@pytest.mark.parametrize("window", [None, 5])
def test_attention_soft_cap_and_window_against_plain_math(window):
    """The backend's capped scores c * tanh(s / c), in prefill, decode and a chunk after context."""
    from pagedllm.attention.backends.torch_ref import TorchReferenceBackend

    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, cap, scale = 4, 2, 8, 2.0, 0.9
    backend = TorchReferenceBackend()
    layout = backend.kv_cache_layout(12, BLOCK_SIZE, kv_heads, dim, torch.float32)
    cache = torch.zeros(layout.shape)
    tables = [[1, 2, 3], [4, 5, 6, 7]]
    keys, values = [[], []], [[], []]

    def step(query_lens, seq_lens, num_decodes):
        q = torch.randn(sum(query_lens), heads, dim, generator=gen) * 3
        k = torch.randn(sum(query_lens), kv_heads, dim, generator=gen) * 3
        v = torch.randn(sum(query_lens), kv_heads, dim, generator=gen)
        _, md = build_step(query_lens, seq_lens, tables, BLOCK_SIZE, num_decodes)
        out = backend.forward(q, k, v, cache, layout, md, scale, window, 0, cap)
        start = 0
        for r, (n, total) in enumerate(zip(query_lens, seq_lens)):
            keys[r].append(k[start : start + n])
            values[r].append(v[start : start + n])
            all_k = torch.cat(keys[r]).repeat_interleave(heads // kv_heads, dim=1)
            all_v = torch.cat(values[r]).repeat_interleave(heads // kv_heads, dim=1)
            for i in range(n):
                p = total - n + i
                lo = 0 if window is None else max(p - window + 1, 0)
                scores = torch.einsum("hd,lhd->hl", q[start + i], all_k[lo : p + 1]) * scale
                probs = torch.softmax(torch.tanh(scores / cap) * cap, dim=-1)
                expected = torch.einsum("hl,lhd->hd", probs, all_v[lo : p + 1])
                assert torch.allclose(out[start + i], expected, atol=1e-5), (r, p)
            start += n

    step([6, 9], [6, 9], 0)  # fresh prefills
    step([1, 5], [7, 14], 1)  # a decode and a chunk after cached context
    step([1, 1], [8, 15], 2)  # two decodes

"""Our Llama-family models against transformers on the same tiny random weights (float32).

Three prompts of different lengths run as one flat batch through the paged KV cache; then one
decode step for all three as a batch; then a mixed step (two decodes and a chunked prefill).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from paged_batch import (
    assert_close,
    assign_blocks,
    bind_kv_caches,
    check_prefill_then_decode,
    reference_logprobs,
    run_step,
)

from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model

BLOCK_SIZE = 4
PROMPT_LENS = (5, 17, 11)


def prompts(vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in PROMPT_LENS]


def load_pair(folder):
    config = ModelConfig.from_resolved(resolve_model(str(folder)))
    ours = load_model(config, torch.device("cpu"), torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return config, ours, reference


@pytest.mark.parametrize("kind", ["llama", "llama3", "mistral", "qwen2"])
def test_prefill_then_decode_match_transformers(kind, tiny_model_dir):
    config, ours, reference = load_pair(tiny_model_dir(kind))
    batch = prompts(config.vocab_size)
    check_prefill_then_decode(ours, reference, batch, BLOCK_SIZE, kind)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_decodes_mixed_with_a_chunked_prefill(kind, tiny_model_dir):
    config, ours, reference = load_pair(tiny_model_dir(kind))
    a, b, c = prompts(config.vocab_size)
    tables = assign_blocks([len(a) + 1, len(b) + 1, len(c)], BLOCK_SIZE)
    bind_kv_caches(ours, sum(len(t) for t in tables), BLOCK_SIZE)
    first, rest = c[:6], c[6:]
    run_step(ours, [a, b, first], [len(a), len(b), len(first)], tables, BLOCK_SIZE)

    # Decodes for a and b come first, then the rest of c attends over its cached first chunk.
    chunks = [[a[0]], [b[0]], rest]
    step = run_step(ours, chunks, [len(a) + 1, len(b) + 1, len(c)], tables, BLOCK_SIZE, num_decodes=2)
    assert_close(step[0], reference_logprobs(reference, a + [a[0]])[-1:], f"{kind} decode a")
    assert_close(step[1], reference_logprobs(reference, b + [b[0]])[-1:], f"{kind} decode b")
    assert_close(step[2], reference_logprobs(reference, c)[len(first) :], f"{kind} chunked prefill c")


def test_config_fields_of_tiny_models(tiny_model_dir):
    mistral = ModelConfig.from_resolved(resolve_model(str(tiny_model_dir("mistral"))))
    assert mistral.architecture == "MistralForCausalLM"
    assert mistral.sliding_windows == (6, 6, 6)
    assert (mistral.num_layers, mistral.num_kv_heads, mistral.head_dim) == (3, 1, 16)
    assert mistral.eos_token_ids == {2} and mistral.bos_token_id == 1
    assert mistral.kv_bytes_per_token(torch.bfloat16) == 2 * 3 * 1 * 16 * 2

    llama3 = ModelConfig.from_resolved(resolve_model(str(tiny_model_dir("llama3"))))
    assert llama3.head_dim == 24 and llama3.sliding_windows == (None, None)
    assert llama3.max_position_embeddings == 256 and llama3.vocab_size == 512

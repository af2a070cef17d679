"""Config variants of the newer architectures against transformers at the model level, and their
tensor-parallel sharding (two gloo ranks reproduce one).

Each variant prefills three prompts as one paged batch, then decodes one token for all three.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
import transformers
from paged_batch import (
    check_prefill_then_decode,
)
from test_tensor_parallel import _rank, free_port, logits_for

import tiny_models
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model

BLOCK_SIZE = 4
PROMPT_LENS = (5, 17, 30)

VARIANTS = {
    # No 1/sqrt(d) scaling but 1/(layer+1) instead, exact GELU, an untied LM head.
    "gpt2-scalings": lambda: tiny_models.gpt2_config(
        scale_attn_weights=False,
        scale_attn_by_inverse_layer_idx=True,
        activation_function="gelu",
        tie_word_embeddings=False,
    ),
    # Default rope over half of each head (partial rotary without LongRoPE).
    "phi3-partial-rotary": lambda: tiny_models.phi3_config(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)
    ),
    "qwen3-attention-bias": lambda: tiny_models.qwen3_config(attention_bias=True, tie_word_embeddings=False),
    # Top-1 routing and a sliding window shorter than the prompts.
    "mixtral-top1-sliding": lambda: tiny_models.mixtral_config(
        num_local_experts=3, num_experts_per_tok=1, sliding_window=12
    ),
    # Renormalised top-k; layer 0 keeps a dense MLP.
    "qwen2-moe-norm-topk-dense-layer": lambda: tiny_models.qwen2_moe_config(
        norm_topk_prob=True, mlp_only_layers=[0]
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_transformers(variant, tmp_path):
    folder = tiny_models.save_tiny(VARIANTS[variant](), tmp_path, seed=21)
    config = ModelConfig.from_resolved(resolve_model(str(folder)))
    ours = load_model(config, torch.device("cpu"), torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    check_prefill_then_decode(ours, reference, prompts, BLOCK_SIZE, variant)


TP_MODELS = {
    "qwen3": tiny_models.qwen3_config,
    "phi3-longrope": lambda: tiny_models.phi3_longrope_config(original_max=4),  # long from the start
    "gpt2": lambda: tiny_models.gpt2_config(n_embd=96, n_head=4),  # 4 heads split over 2 ranks
    "mixtral": tiny_models.mixtral_config,  # one KV head, replicated on both ranks
    "qwen2-moe": tiny_models.qwen2_moe_config,
}


def test_two_ranks_match_one(tmp_path):
    folders = {}
    for kind, make_config in TP_MODELS.items():
        folders[kind] = tiny_models.save_tiny(make_config(), tmp_path / kind, seed=22)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(2, free_port(), folders, results), nprocs=2, join=True)
        for kind, folder in folders.items():
            expected = logits_for(folder)
            for rank in range(2):
                for ours, reference in zip(results[(kind, rank)], expected):
                    torch.testing.assert_close(
                        ours, reference, atol=1e-4, rtol=1e-4, msg=f"{kind} rank {rank}"
                    )

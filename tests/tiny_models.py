"""Tiny random-weight checkpoints built from `transformers` configs, saved with `save_pretrained`.

Weights are drawn with std 0.08 so that logits are decisive (top-2 gaps mostly far above the
1e-3 near-tie threshold) and greedy comparisons between engines are meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 512


def build_tokenizer():
    """A small byte-level BPE tokenizer trained in memory (no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its progress lines go to stdout, between the GPU check's rows
    )
    corpus = ["The quick brown fox jumps over the lazy dog. " * 4, "Paged attention keeps KV in blocks. " * 4]
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def randomize(model: torch.nn.Module, std: float = 0.08, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * std
            if "norm" in name or ".ln_" in name:  # ln_1, ln_2, ln_f: GPT-2's LayerNorms
                param.copy_(1.0 + noise)  # norm weights near 1 (LayerNorm biases near 0)
                if name.endswith("bias"):
                    param.copy_(noise)
            else:
                param.copy_(noise)


def save_tiny(config, path: Path, seed: int = 0, **save_kwargs) -> Path:
    """Instantiate `config` with decisive random weights and save model + tokenizer to `path`
    (`save_kwargs` go to `save_pretrained`, e.g. `max_shard_size` for a sharded checkpoint)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed=seed)
    model.save_pretrained(path, **save_kwargs)
    build_tokenizer().save_pretrained(path)
    return path


def llama_config(**overrides):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return LlamaConfig(**base)


def mistral_config(**overrides):
    from transformers import MistralConfig

    base = llama_config().to_dict()
    for key in ("architectures", "model_type", "transformers_version"):
        base.pop(key, None)
    base.update(sliding_window=24)
    base.update(overrides)
    return MistralConfig(**base)


def qwen2_config(**overrides):
    from transformers import Qwen2Config

    base = dict(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return Qwen2Config(**base)


# ---- Qwen3, Phi-3, GPT-2, Mixtral, Qwen2-MoE (head sizes 24 and 40, not multiples of 32) ----


def qwen3_config(**overrides):
    from transformers import Qwen3Config

    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=40,  # q is 160 wide against a hidden size of 64: head_dim comes from the config
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return Qwen3Config(**base)


def phi3_config(**overrides):
    """Plain Phi-3: default rope, GQA with head size 24, a sliding window shorter than the prompts."""
    from transformers import Phi3Config

    base = dict(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        rms_norm_eps=1e-5,
        sliding_window=20,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(overrides)
    return Phi3Config(**base)


def phi3_longrope_config(original_max: int = 32, **overrides):
    """Phi-3 with LongRoPE (short factors up to `original_max` tokens, long beyond) and partial
    rotary (30 of 40 channels per head, as Phi-4-mini rotates 3/4), MHA with head size 40."""
    gen = torch.Generator().manual_seed(3)
    rotary_half = 15
    short = (1.0 + 0.5 * torch.rand(rotary_half, generator=gen)).tolist()
    long = (2.0 + 6.0 * torch.rand(rotary_half, generator=gen)).tolist()
    base = dict(
        hidden_size=80,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=original_max,
        sliding_window=None,
        rope_parameters=dict(
            rope_type="longrope",
            rope_theta=10000.0,
            partial_rotary_factor=0.75,
            short_factor=short,
            long_factor=long,
            original_max_position_embeddings=original_max,
        ),
    )
    base.update(overrides)
    return phi3_config(**base)


def gpt2_config(**overrides):
    from transformers import GPT2Config

    base = dict(
        vocab_size=VOCAB,
        n_embd=72,
        n_head=3,  # head size 24
        n_layer=2,
        n_positions=256,
        activation_function="gelu_new",
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return GPT2Config(**base)


def mixtral_config(**overrides):
    from transformers import MixtralConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=80,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head size 40, one KV head
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return MixtralConfig(**base)


def qwen2_moe_config(**overrides):
    from transformers import Qwen2MoeConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=128,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # head size 24
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    base.update(overrides)
    return Qwen2MoeConfig(**base)


# ---- Gemma 3 (text): sliding and full layers, MQA, head size 24, window shorter than prompts ----


def gemma3_config(**overrides):
    """Layers 0, 1, 3 slide over 8 positions, layer 2 is global; global rope is linearly scaled."""
    from transformers import Gemma3TextConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        query_pre_attn_scalar=32,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
        },
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(overrides)
    return Gemma3TextConfig(**base)

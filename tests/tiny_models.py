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
    )
    corpus = ["The quick brown fox jumps over the lazy dog. " * 4, "Paged attention keeps KV in blocks. " * 4]
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def randomize(model: torch.nn.Module, std: float = 0.08, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * std
            if "norm" in name:
                param.copy_(1.0 + noise)  # norm weights near 1 (LayerNorm biases near 0)
                if name.endswith("bias"):
                    param.copy_(noise)
            else:
                param.copy_(noise)


def save_tiny(config, path: Path, seed: int = 0) -> Path:
    """Instantiate `config` with decisive random weights and save model + tokenizer to `path`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed=seed)
    model.save_pretrained(path)
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

"""transformers' `generate` throughput on a model shape built on the GPU without initialising
its weights (their values do not change the work), for the offline-throughput comparison.

Prompts are random ids of one length, so the batch needs no padding; EOS is switched off so that
every request produces exactly `output_len` tokens, as `ignore_eos` does in pagedllm.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.initialization import no_init_weights


def build(config_folder: Path):
    config = AutoConfig.from_pretrained(config_folder)
    with torch.device("cuda"), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@torch.inference_mode()
def generate_seconds(model, num_requests: int, input_len: int, output_len: int) -> float:
    """Wall time of one batched greedy `generate` of `num_requests` random prompts."""
    vocab = model.config.vocab_size
    ids = torch.randint(min(1000, vocab // 2), vocab, (num_requests, input_len), device="cuda")
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=output_len,
        min_new_tokens=output_len,
        do_sample=False,
    )
    torch.cuda.synchronize()
    assert out.shape[1] == input_len + output_len, f"generated {out.shape[1] - input_len} tokens"
    return time.perf_counter() - start


def throughput(config_folder: Path, num_requests: int, input_len: int, output_len: int) -> dict:
    """Output tokens/s of transformers' generate, after a small warm-up call."""
    model = build(config_folder)
    generate_seconds(model, 2, 16, 2)
    seconds = generate_seconds(model, num_requests, input_len, output_len)
    return {
        "num_requests": num_requests,
        "elapsed_s": seconds,
        "output_tokens_per_s": num_requests * output_len / seconds,
        "total_tokens_per_s": num_requests * (input_len + output_len) / seconds,
    }

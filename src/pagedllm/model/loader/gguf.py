"""Weights of a GGUF file under Hugging Face checkpoint names, dequantized to float32.

Every tensor is dequantized with `gguf.quants.dequantize`, renamed from GGUF's
`blk.N.attn_q.weight` style to `model.layers.N.self_attn.q_proj.weight`, and, for the llama
architecture, has the row permutation of q and k undone: llama.cpp's converter reorders each
head's rows from the rotate-half layout to interleaved pairs; our rotary embedding expects the
Hugging Face layout back.

Gemma 3 names some block tensors differently (its `ffn_norm` is the norm before the MLP; it
also has post-attention, post-MLP and q/k norms), keeps the rotate-half layout (no
permutation), and its converter stored every norm weight with Gemma's + 1 folded in: 1 is
subtracted again so the model's (1 + w) comes out right.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf.quants import dequantize

from pagedllm.model.loader.gguf_reader import GGUFFile, GGUFTensorInfo

logger = logging.getLogger(__name__)

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Block tensor names that differ from the table above, per GGUF architecture.
_ARCH_BLOCK_NAMES = {
    "gemma3": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    },
}
# Architectures whose norm weights were stored as 1 + w.
_NORM_PLUS_ONE = {"gemma3"}
# llama3-style GGUFs carry precomputed scaled inverse frequencies; rotary derives them from the config.
_IGNORED = {"rope_freqs"}
# Architectures whose converter permuted q/k rows for interleaved rotary.
_ROPE_PERMUTED = {"llama"}
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL_TENSOR = re.compile(r"^(\w+)\.(weight|bias)$")


def gguf_to_hf_name(name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor; None for tensors that are ignored; KeyError if unknown."""
    if match := _BLOCK_TENSOR.match(name):
        layer, kind, suffix = match.groups()
        block_names = {**_BLOCK_NAMES, **_ARCH_BLOCK_NAMES.get(arch, {})}
        if kind in block_names:
            return f"model.layers.{layer}.{block_names[kind]}.{suffix}"
    elif match := _GLOBAL_TENSOR.match(name):
        kind, suffix = match.groups()
        if kind in _IGNORED:
            return None
        if kind in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[kind]}.{suffix}"
    raise KeyError(f"GGUF tensor {name!r} has no known Hugging Face name")


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, interleaved (x0, y0, x1, y1...) -> halves (x..., y...)."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    grouped = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def iterate_gguf_weights(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, float32 tensor) for every tensor of the GGUF file, one at a time."""
    gguf_file = GGUFFile(path)
    arch = gguf_file.architecture
    heads = _rope_heads(gguf_file) if arch in _ROPE_PERMUTED else {}
    for info in gguf_file.tensors:
        hf_name = gguf_to_hf_name(info.name, arch)
        if hf_name is None:
            logger.info("ignoring GGUF tensor %s", info.name)
            continue
        weights = _dequantize(gguf_file, info)
        kind = info.name.split(".")[2] if info.name.startswith("blk.") else None
        if kind in heads:
            weights = unpermute_rows(weights, heads[kind])
        if arch in _NORM_PLUS_ONE and info.name.endswith("norm.weight"):
            weights -= 1.0
        yield hf_name, torch.from_numpy(weights)


def _rope_heads(gguf_file: GGUFFile) -> dict[str, int]:
    arch = gguf_file.architecture
    num_heads = int(gguf_file.metadata[f"{arch}.attention.head_count"])
    num_kv_heads = int(gguf_file.metadata.get(f"{arch}.attention.head_count_kv", num_heads))
    return {"attn_q": num_heads, "attn_k": num_kv_heads}


def _dequantize(gguf_file: GGUFFile, info: GGUFTensorInfo) -> np.ndarray:
    values = dequantize(gguf_file.raw(info), info.qtype)
    # F32 comes back as a read-only view of the mapped file; torch needs its own writable copy.
    if not values.flags.writeable or values.dtype != np.float32:
        values = values.astype(np.float32, copy=True)
    return np.ascontiguousarray(values.reshape(info.shape))

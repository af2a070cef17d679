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

With `int4_blocks=True` (`--quantization int4`), 2-D Q4_0 and Q4_1 tensors are not dequantized:
they are decoded into `Int4Blocks` (codes 0..15 and a float32 scale and zero per 32 weights,
w = (code - 8) * scale + zero: Q4_1's w = d * q + m is scale = d, zero = m + 8d; Q4_0's
w = d * (q - 8) is scale = d, zero = 0), which the linear layers pack for the int4 kernel
without a round trip through float weights. Other types (Q8_0, the K-quants, F32) are
dequantized as usual and quantized by the layers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from pagedllm.model.layers.quantization.int4_blocks import Int4Blocks
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


# GGUF block layouts of the 4-bit types kept as Int4Blocks: fp16 d, (fp16 m), 16 bytes of codes.
_INT4_TYPES = {GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}
_GGUF_BLOCK = 32


def iterate_gguf_weights(
    path: str | Path, int4_blocks: bool = False
) -> Iterator[tuple[str, torch.Tensor | Int4Blocks]]:
    """Yield (hf_name, float32 tensor) for every tensor of the GGUF file, one at a time;
    with `int4_blocks`, Q4_0/Q4_1 matrices come as `Int4Blocks` instead."""
    gguf_file = GGUFFile(path)
    arch = gguf_file.architecture
    heads = _rope_heads(gguf_file) if arch in _ROPE_PERMUTED else {}
    for info in gguf_file.tensors:
        hf_name = gguf_to_hf_name(info.name, arch)
        if hf_name is None:
            logger.info("ignoring GGUF tensor %s", info.name)
            continue
        kind = info.name.split(".")[2] if info.name.startswith("blk.") else None
        if int4_blocks and info.qtype in _INT4_TYPES and len(info.shape) == 2:
            yield hf_name, _int4_blocks(gguf_file, info, heads.get(kind))
            continue
        weights = _dequantize(gguf_file, info)
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


def _int4_blocks(gguf_file: GGUFFile, info: GGUFTensorInfo, rope_heads: int | None) -> Int4Blocks:
    """A Q4_0/Q4_1 matrix as codes, scales and zeros (q/k rows unpermuted like the floats)."""
    codes, scale, zero = decode_int4(gguf_file.raw(info), info.qtype, info.shape)
    if rope_heads is not None:
        codes, scale, zero = (unpermute_rows(a, rope_heads) for a in (codes, scale, zero))
    return Int4Blocks(
        torch.from_numpy(np.ascontiguousarray(codes)),
        torch.from_numpy(np.ascontiguousarray(scale)),
        torch.from_numpy(np.ascontiguousarray(zero)),
        _GGUF_BLOCK,
    )


def decode_int4(
    raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 [rows, cols], scale and zero float32 [rows, cols / 32]) of Q4_0/Q4_1 bytes,
    such that w = (codes - 8) * scale + zero.

    A block is fp16 d, for Q4_1 fp16 m, then 16 bytes: byte j holds code j in its low nibble
    and code j + 16 in its high nibble. Q4_1: w = d * q + m; Q4_0: w = d * (q - 8).
    """
    rows, cols = shape
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // _GGUF_BLOCK, _INT4_TYPES[qtype])
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if qtype == GGMLQuantizationType.Q4_1:
        minimum = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = minimum + 8 * scale
    else:
        zero = np.zeros_like(scale)
    packed = blocks[..., -16:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, cols)
    return codes, scale, zero

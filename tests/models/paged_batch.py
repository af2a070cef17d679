"""Drive a model through paged attention by hand: KV caches, block tables and metadata.

Each request gets its own run of physical blocks (block 0 is the null block, never used),
and a step is described by each request's number of new tokens and its context length.
Layers are grouped by sliding window as the engine does; every group gets its own cache
tensors but the same block ids (their pools are separate, so nothing clashes), and a sliding
layer's window only limits what it reads.
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.core.kv_cache_spec import group_layers
from pagedllm.model.layers.attention import Attention


def _attention_layers(model: torch.nn.Module) -> list[Attention]:
    return [layer for layer in model.modules() if isinstance(layer, Attention)]


def num_kv_groups(model: torch.nn.Module) -> int:
    return len(group_layers([layer.sliding_window for layer in _attention_layers(model)])[0])


def bind_kv_caches(model: torch.nn.Module, num_blocks: int, block_size: int, dtype=torch.float32) -> None:
    """One cache of num_blocks + 1 blocks per Attention layer, in the reference backend's layout."""
    backend = TorchReferenceBackend()
    layers = _attention_layers(model)
    _, layer_groups = group_layers([layer.sliding_window for layer in layers])
    for layer, group in zip(layers, layer_groups):
        layout = backend.kv_cache_layout(
            num_blocks + 1, block_size, layer.num_kv_heads, layer.head_dim, dtype
        )
        layer.bind_kv_cache(backend, torch.zeros(layout.shape, dtype=dtype), layout, group)


def assign_blocks(max_lens: list[int], block_size: int) -> list[list[int]]:
    """Distinct consecutive blocks per request, starting after the null block."""
    tables, next_block = [], 1
    for length in max_lens:
        count = -(-length // block_size)
        tables.append(list(range(next_block, next_block + count)))
        next_block += count
    return tables


def build_step(
    query_lens: list[int],
    seq_lens: list[int],
    tables: list[list[int]],
    block_size: int,
    num_decodes: int,
    num_groups: int = 1,
) -> tuple[torch.Tensor, AttentionMetadata]:
    """Positions [T] and metadata for one step (requests [0, num_decodes) must have one token)."""
    qsl = np.zeros(len(query_lens) + 1, dtype=np.int32)
    qsl[1:] = np.cumsum(query_lens)
    positions = np.concatenate([np.arange(s - q, s) for q, s in zip(query_lens, seq_lens)])
    table = np.zeros((len(tables), max(len(t) for t in tables)), dtype=np.int32)
    for row, blocks in enumerate(tables):
        table[row, : len(blocks)] = blocks
    owner = np.repeat(np.arange(len(query_lens)), query_lens)
    slots = table[owner, positions // block_size].astype(np.int64) * block_size + positions % block_size
    seq = np.asarray(seq_lens, dtype=np.int32)
    backend = TorchReferenceBackend()
    md = AttentionMetadata(
        num_reqs=len(query_lens),
        num_actual_tokens=int(qsl[-1]),
        query_start_loc=torch.from_numpy(qsl),
        seq_lens=torch.from_numpy(seq),
        block_tables=[torch.from_numpy(table)] * num_groups,
        slot_mappings=[torch.from_numpy(slots)] * num_groups,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        num_decodes=num_decodes,
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq,
        block_size=block_size,
    )
    backend.plan(md)
    return torch.from_numpy(positions).long(), md


@torch.inference_mode()
def run_step(model, token_chunks: list[list[int]], seq_lens: list[int], tables, block_size, num_decodes=0):
    """Run one step; returns float32 logits for every token, split per request."""
    query_lens = [len(chunk) for chunk in token_chunks]
    positions, md = build_step(query_lens, seq_lens, tables, block_size, num_decodes, num_kv_groups(model))
    input_ids = torch.tensor([t for chunk in token_chunks for t in chunk], dtype=torch.long)
    logits = model.compute_logits(model(input_ids, positions, md)).float()
    return list(logits.split(query_lens))


ATOL = 1e-4


@torch.inference_mode()
def reference_logprobs(model, ids: list[int]) -> torch.Tensor:
    """transformers' log-softmax over every position of one unpadded prompt."""
    return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def assert_close(ours: torch.Tensor, expected: torch.Tensor, label: str) -> None:
    diff = (torch.log_softmax(ours, dim=-1) - expected).abs().max().item()
    assert diff < ATOL, f"{label}: max |log-softmax difference| {diff:.2e} >= {ATOL}"


def check_prefill_then_decode(ours, reference, prompts: list[list[int]], block_size: int, label: str) -> None:
    """All prompts prefilled as one flat paged batch, then one decode each as one batch; every
    position's log-softmax must match transformers on the same tokens."""
    lens = [len(p) for p in prompts]
    tables = assign_blocks([n + 2 for n in lens], block_size)
    bind_kv_caches(ours, sum(len(t) for t in tables), block_size)
    prefill = run_step(ours, prompts, lens, tables, block_size)
    for i, ids in enumerate(prompts):
        assert_close(prefill[i], reference_logprobs(reference, ids), f"{label} prefill of prompt {i}")
    next_tokens = [int(logits[-1].argmax()) for logits in prefill]
    decode = run_step(
        ours, [[t] for t in next_tokens], [n + 1 for n in lens], tables, block_size, num_decodes=len(prompts)
    )
    for i, ids in enumerate(prompts):
        expected = reference_logprobs(reference, ids + [next_tokens[i]])[-1:]
        assert_close(decode[i], expected, f"{label} decode of prompt {i}")

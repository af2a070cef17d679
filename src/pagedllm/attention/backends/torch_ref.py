"""Reference paged attention in plain torch (CPU, and any device as a fallback).

Decode requests (one query token) are attended as one batch: their context is gathered
through the block table into [num_decodes, context, kv_heads, head_dim]. Prefill requests
(chunks of any length, possibly after a prefix hit) are padded to the longest chunk and
attended with a causal mask offset by each request's cached context.

Per-step index tensors are built once in `plan`; what depends on a KV-cache group (its block
table, its window) is built the first time a layer of that group runs and reused by the
others. For a sliding window w, only the blocks from each request's first visible position
(first query position - w + 1) on are gathered, so a decode reads at most
ceil((w - 1) / block_size) + 1 blocks however long the context is::

    positions  0 ........................ p-w+1 ....... p
    blocks     [ null / stale ] [ gathered from here ....]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pagedllm.attention.backends.base import ROW, AttentionBackend, KVCacheLayout
from pagedllm.attention.metadata import AttentionMetadata


@dataclass
class _DecodeStep:
    query_pos: torch.Tensor  # [D] absolute position of each decode query
    query_pos_cpu: np.ndarray


@dataclass
class _PrefillStep:
    token_index: torch.Tensor  # [P, Qmax] index of each padded query row into the step's tokens
    query_valid: torch.Tensor  # [P, Qmax]
    query_positions: torch.Tensor  # [P, Qmax] absolute positions of the queries
    context_before_cpu: np.ndarray  # [P] cached tokens before each chunk
    seq_lens_cpu: np.ndarray  # [P]
    max_query_len: int
    # Every prefill starts at position 0 (no cached context): attend over the step's own K/V,
    # no gather (and, without a window that cuts in, no explicit mask).
    fresh: bool


@dataclass
class _Context:
    """Where one KV-cache group's queries of one kind (decode or prefill) read their keys."""

    block_table: torch.Tensor | None  # [N, blocks] to gather; None: the step's own K/V
    mask: torch.Tensor | None  # broadcast over heads; None: plain causal attention


@dataclass
class _GroupPlan:
    decode: _Context | None
    prefill: _Context | None


@dataclass
class _Plan:
    decode: _DecodeStep | None
    prefill: _PrefillStep | None
    groups: dict[int, _GroupPlan] = field(default_factory=dict)  # built lazily per group


class TorchReferenceBackend(AttentionBackend):
    """Portable paged attention built from gathers and `scaled_dot_product_attention`."""

    name = "torch"

    def kv_cache_layout(self, num_blocks, block_size, num_kv_heads, head_dim, dtype) -> KVCacheLayout:
        # Heads outermost: gathering a batch's blocks then yields [kv_heads, R, context, head_dim]
        # contiguous, which batched matmuls consume without another copy.
        return KVCacheLayout((2, num_kv_heads, num_blocks, block_size, head_dim), dtype, ROW)

    def plan(self, md: AttentionMetadata) -> None:
        md.plan = _Plan(self._plan_decode(md), self._plan_prefill(md))

    def _plan_decode(self, md: AttentionMetadata) -> _DecodeStep | None:
        nd = md.num_decodes
        if nd == 0:
            return None
        return _DecodeStep(query_pos=(md.seq_lens[:nd] - 1).long(), query_pos_cpu=md.seq_lens_cpu[:nd] - 1)

    def _plan_prefill(self, md: AttentionMetadata) -> _PrefillStep | None:
        nd, nr = md.num_decodes, md.num_reqs
        if nd == nr:
            return None
        device = md.seq_lens.device
        starts = md.query_start_loc[nd:nr].long()
        query_lens = md.query_start_loc[nd + 1 : nr + 1].long() - starts
        qsl = md.query_start_loc_cpu
        query_lens_cpu = qsl[nd + 1 : nr + 1] - qsl[nd:nr]
        max_query_len = int(query_lens_cpu.max())
        offsets = torch.arange(max_query_len, device=device)
        query_valid = offsets[None, :] < query_lens[:, None]
        token_index = torch.where(query_valid, starts[:, None] + offsets[None, :], starts[:, None])
        context_before = md.seq_lens[nd:nr].long() - query_lens
        seq_lens_cpu = md.seq_lens_cpu[nd:nr]
        context_before_cpu = seq_lens_cpu - query_lens_cpu
        return _PrefillStep(
            token_index=token_index,
            query_valid=query_valid,
            query_positions=context_before[:, None] + offsets[None, :],
            context_before_cpu=context_before_cpu,
            seq_lens_cpu=seq_lens_cpu,
            max_query_len=max_query_len,
            fresh=bool((context_before_cpu == 0).all()),
        )

    def _group_plan(self, md: AttentionMetadata, kv_group: int, window: int | None) -> _GroupPlan:
        plan: _Plan = md.plan
        group_plan = plan.groups.get(kv_group)
        if group_plan is None:
            table = md.block_tables[kv_group]
            group_plan = _GroupPlan(
                decode=None if plan.decode is None else _decode_context(md, plan.decode, table, window),
                prefill=None if plan.prefill is None else _prefill_context(md, plan.prefill, table, window),
            )
            plan.groups[kv_group] = group_plan
        return group_plan

    def forward(
        self,
        query,
        key,
        value,
        kv_cache,
        layout,
        md,
        scale,
        sliding_window=None,
        kv_group=0,
        logits_soft_cap=None,
    ):
        num_tokens = md.num_actual_tokens
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        num_kv_heads, head_dim = key_cache.shape[0], key_cache.shape[-1]
        # Write this step's K/V for every request before any request attends, so a request
        # may read blocks another request fills in the same step (same-step prefix hits).
        slots = md.slot_mappings[kv_group]
        flat_k = key_cache.view(num_kv_heads, -1, head_dim)
        flat_v = value_cache.view(num_kv_heads, -1, head_dim)
        flat_k.index_copy_(1, slots, key[:num_tokens].transpose(0, 1).to(flat_k.dtype))
        flat_v.index_copy_(1, slots, value[:num_tokens].transpose(0, 1).to(flat_v.dtype))

        plan: _Plan = md.plan
        group_plan = self._group_plan(md, kv_group, sliding_window)
        output = torch.empty_like(query)
        if group_plan.decode is not None:
            d = group_plan.decode
            k = _gather(key_cache, d.block_table)
            v = _gather(value_cache, d.block_table)
            output[: md.num_decodes] = _decode_attention(
                query[: md.num_decodes], k, v, d.mask, scale, logits_soft_cap
            )
        if group_plan.prefill is not None:
            p, ctx = plan.prefill, group_plan.prefill
            q = query[p.token_index].transpose(1, 2)  # [P, H, Qmax, Dh]
            if ctx.block_table is None:
                # Padding sits after each request's last query, so a causal mask never lets a
                # real query see a padded key.
                k = key[p.token_index].transpose(1, 2)
                v = value[p.token_index].transpose(1, 2)
            else:
                k = _gather(key_cache, ctx.block_table).transpose(0, 1)
                v = _gather(value_cache, ctx.block_table).transpose(0, 1)
            out = _prefill_attention(q, k, v, ctx.mask, scale, logits_soft_cap)
            out = out.transpose(1, 2)  # [P, Qmax, H, Dh]
            output[p.token_index[p.query_valid]] = out[p.query_valid]
        return output


def _window_start_blocks(positions: np.ndarray, window: int, block_size: int) -> np.ndarray:
    """Per query, the first block holding a position it can see: (p - w + 1) // block_size."""
    return np.maximum(positions - window + 1, 0) // block_size


def _context_blocks(
    table: torch.Tensor, rows: slice, first: np.ndarray, last: np.ndarray, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks first[r] .. last[r] of each row (padded to the longest run) and their key positions.

    Without an offset this is a plain slice of the table; with one, a gather of per-row column
    ranges. Padding columns repeat the table's last column: they are masked out by position.
    """
    num_blocks = int((last - first).max()) + 1
    device = table.device
    if not first.any():
        block_table = table[rows, :num_blocks].long()
        key_positions = torch.arange(num_blocks * block_size, device=device)[None, :]
        return block_table, key_positions
    start = torch.from_numpy(first).to(device=device, dtype=torch.long)
    columns = start[:, None] + torch.arange(num_blocks, device=device)[None, :]
    block_table = table[rows].long().gather(1, columns.clamp(max=table.shape[1] - 1))
    key_positions = (
        start[:, None] * block_size + torch.arange(num_blocks * block_size, device=device)[None, :]
    )
    return block_table, key_positions


def _decode_context(md: AttentionMetadata, step: _DecodeStep, table: torch.Tensor, window: int | None):
    bs = md.block_size
    positions = step.query_pos_cpu
    if window is not None and positions.max() < window:
        window = None  # every query still sees its whole context
    first = np.zeros_like(positions) if window is None else _window_start_blocks(positions, window, bs)
    # Attend over whole blocks (masking the tail): slicing to the exact length would make
    # the gathered context non-contiguous and cost every matmul a copy.
    block_table, keys = _context_blocks(table, slice(0, md.num_decodes), first, positions // bs, bs)
    query = step.query_pos[:, None]
    mask = keys <= query
    if window is not None:
        mask &= keys > query - window
    return _Context(block_table, mask[None, :, None, :])  # [1, D, 1, L] over heads and group


def _prefill_context(md: AttentionMetadata, step: _PrefillStep, table: torch.Tensor, window: int | None):
    bs = md.block_size
    if window is not None and step.seq_lens_cpu.max() <= window:
        window = None  # no query reaches further back than the window
    query = step.query_positions[:, :, None]  # [P, Qmax, 1]
    if step.fresh:
        if window is None:
            return _Context(None, None)
        block_table = None
        keys = step.query_positions[:, None, :]  # the step's own tokens, padded alike
        mask = (keys <= query) & (keys > query - window)
    else:
        ends = (step.seq_lens_cpu - 1) // bs
        if window is None:
            first = np.zeros_like(ends)
        else:
            first = _window_start_blocks(step.context_before_cpu, window, bs)
        rows = slice(md.num_decodes, md.num_reqs)
        block_table, keys = _context_blocks(table, rows, first, ends, bs)
        keys = keys[:, None, :]
        mask = keys <= query  # [P, Qmax, L]
        if window is not None:
            mask &= keys > query - window
    # Padded query rows attend to their first key so softmax stays finite; their output is dropped.
    mask[:, :, 0] |= ~step.query_valid
    return _Context(block_table, mask[:, None])  # [P, 1, Qmax, L]


def _prefill_attention(q, k, v, mask, scale: float, soft_cap: float | None) -> torch.Tensor:
    """q [P, H, Q, Dh] over k, v [P, Hk, L, Dh]; mask None means causal (L == Q)."""
    gqa = q.shape[1] != k.shape[1]
    if soft_cap is None:
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if mask is None:
        length = q.shape[2]
        mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    if gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = _soft_cap(torch.matmul(q, k.transpose(-1, -2)).float() * scale, soft_cap)
    scores.masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def _soft_cap(scores: torch.Tensor, cap: float | None) -> torch.Tensor:
    return scores if cap is None else torch.tanh(scores / cap) * cap


def _decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """One query token per request: two batched matmuls with the GQA group folded into rows.

    `key`/`value` are [kv_heads, R, L, head_dim]. torch's CPU flash kernel spends ~8 ms per
    layer on a 128-request decode batch (it tiles for long queries); these matmuls take ~1.
    """
    num_reqs, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    q = query.view(num_reqs, num_kv_heads, group, head_dim).transpose(0, 1)  # [Hk, R, G, Dh]
    scores = _soft_cap(torch.matmul(q, key.transpose(-1, -2)).float() * scale, soft_cap)  # [Hk, R, G, L]
    scores.masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs, value).transpose(0, 1).reshape(num_reqs, num_heads, head_dim)


def _gather(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """[kv_heads, blocks, bs, Dh] cache and [R, nb] table -> context [kv_heads, R, nb * bs, Dh].

    `index_select` over whole blocks copies contiguous rows of bs * Dh elements; it runs
    ~4x faster on CPU than advanced indexing with a 2-D index.
    """
    hk, _, bs, dh = cache.shape
    r, nb = block_table.shape
    blocks = torch.index_select(cache.view(hk, -1, bs * dh), 1, block_table.reshape(-1))
    return blocks.view(hk, r, nb * bs, dh)

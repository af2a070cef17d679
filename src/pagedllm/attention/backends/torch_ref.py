"""Reference paged attention in plain torch (CPU, and any device as a fallback).

Decode requests (one query token) are attended as one batch: their context is gathered
through the block table into [num_decodes, max_context, kv_heads, head_dim]. Prefill
requests (chunks of any length, possibly after a prefix hit) are padded to the longest
chunk and attended with a causal mask offset by each request's cached context. Per-step
index tensors are built once in `plan` and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.metadata import AttentionMetadata


@dataclass
class _DecodePlan:
    block_table: torch.Tensor  # [D, blocks needed by the longest decode context]
    key_positions: torch.Tensor  # [Lmax]
    seq_lens: torch.Tensor  # [D]
    max_len: int


@dataclass
class _PrefillPlan:
    token_index: torch.Tensor  # [P, Qmax] index of each padded query row into the step's tokens
    query_valid: torch.Tensor  # [P, Qmax]
    query_positions: torch.Tensor  # [P, Qmax] absolute positions of the queries
    block_table: torch.Tensor  # [P, blocks needed by the longest context]
    key_positions: torch.Tensor  # [Lmax]
    max_len: int
    # Every prefill starts at position 0 (no cached context): attend over the step's own
    # K/V with a plain causal mask, no gather and no explicit mask tensor.
    fresh: bool


@dataclass
class _Plan:
    decode: _DecodePlan | None
    prefill: _PrefillPlan | None
    masks: dict  # sliding window (or None) -> (decode mask, prefill mask), built lazily


class TorchReferenceBackend(AttentionBackend):
    """Portable paged attention built from gathers and `scaled_dot_product_attention`."""

    name = "torch"

    def kv_cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
        # Heads outermost: gathering a batch's blocks then yields [kv_heads, R, context, head_dim]
        # contiguous, which batched matmuls consume without another copy.
        return (2, num_kv_heads, num_blocks, block_size, head_dim)

    def plan(self, md: AttentionMetadata) -> None:
        md.plan = _Plan(self._plan_decode(md), self._plan_prefill(md), {})

    def _plan_decode(self, md: AttentionMetadata) -> _DecodePlan | None:
        nd = md.num_decodes
        if nd == 0:
            return None
        num_blocks = -(-int(md.seq_lens_cpu[:nd].max()) // md.block_size)
        # Attend over whole blocks (masking the tail): slicing to the exact length would make
        # the gathered context non-contiguous and cost every matmul a copy.
        max_len = num_blocks * md.block_size
        device = md.seq_lens.device
        return _DecodePlan(
            block_table=md.block_table[:nd, :num_blocks].long(),
            key_positions=torch.arange(max_len, device=device),
            seq_lens=md.seq_lens[:nd].long(),
            max_len=max_len,
        )

    def _plan_prefill(self, md: AttentionMetadata) -> _PrefillPlan | None:
        nd, nr = md.num_decodes, md.num_reqs
        if nd == nr:
            return None
        device = md.seq_lens.device
        starts = md.query_start_loc[nd:nr].long()
        query_lens = md.query_start_loc[nd + 1 : nr + 1].long() - starts
        qsl = md.query_start_loc_cpu
        max_query_len = int((qsl[nd + 1 : nr + 1] - qsl[nd:nr]).max())
        num_blocks = -(-int(md.seq_lens_cpu[nd:nr].max()) // md.block_size)
        max_len = num_blocks * md.block_size
        offsets = torch.arange(max_query_len, device=device)
        query_valid = offsets[None, :] < query_lens[:, None]
        token_index = torch.where(query_valid, starts[:, None] + offsets[None, :], starts[:, None])
        context_before = md.seq_lens[nd:nr].long() - query_lens
        return _PrefillPlan(
            token_index=token_index,
            query_valid=query_valid,
            query_positions=context_before[:, None] + offsets[None, :],
            block_table=md.block_table[nd:nr, :num_blocks].long(),
            key_positions=torch.arange(max_len, device=device),
            max_len=max_len,
            fresh=bool((md.seq_lens_cpu[nd:nr] == qsl[nd + 1 : nr + 1] - qsl[nd:nr]).all()),
        )

    def _masks(self, plan: _Plan, sliding_window: int | None):
        cached = plan.masks.get(sliding_window)
        if cached is not None:
            return cached
        decode_mask = prefill_mask = None
        if plan.decode is not None:
            d = plan.decode
            query_pos = (d.seq_lens - 1)[:, None]
            decode_mask = d.key_positions[None, :] <= query_pos
            if sliding_window is not None:
                decode_mask &= d.key_positions[None, :] > query_pos - sliding_window
            decode_mask = decode_mask[None, :, None, :]  # [1, D, 1, L] broadcast over heads and group
        if plan.prefill is not None and not (plan.prefill.fresh and sliding_window is None):
            p = plan.prefill
            query_pos = p.query_positions[:, :, None]
            keys = p.key_positions[None, None, :]
            prefill_mask = keys <= query_pos
            if sliding_window is not None:
                prefill_mask &= keys > query_pos - sliding_window
            # Padded query rows attend to key 0 so softmax stays finite; their output is dropped.
            prefill_mask[:, :, 0] |= ~p.query_valid
            prefill_mask = prefill_mask[:, None]  # [P, 1, Qmax, L]
        plan.masks[sliding_window] = (decode_mask, prefill_mask)
        return decode_mask, prefill_mask

    def forward(self, query, key, value, kv_cache, md, scale, sliding_window=None):
        num_tokens = md.num_actual_tokens
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        num_kv_heads, head_dim = key_cache.shape[0], key_cache.shape[-1]
        # Write this step's K/V for every request before any request attends, so a request
        # may read blocks another request fills in the same step (same-step prefix hits).
        flat_k = key_cache.view(num_kv_heads, -1, head_dim)
        flat_v = value_cache.view(num_kv_heads, -1, head_dim)
        flat_k.index_copy_(1, md.slot_mapping, key[:num_tokens].transpose(0, 1).to(flat_k.dtype))
        flat_v.index_copy_(1, md.slot_mapping, value[:num_tokens].transpose(0, 1).to(flat_v.dtype))

        plan: _Plan = md.plan
        decode_mask, prefill_mask = self._masks(plan, sliding_window)
        output = torch.empty_like(query)
        gqa = query.shape[1] != num_kv_heads
        if plan.decode is not None:
            d = plan.decode
            k = _gather(key_cache, d.block_table)
            v = _gather(value_cache, d.block_table)
            output[: md.num_decodes] = _decode_attention(query[: md.num_decodes], k, v, decode_mask, scale)
        if plan.prefill is not None:
            p = plan.prefill
            q = query[p.token_index].transpose(1, 2)  # [P, H, Qmax, Dh]
            if p.fresh and sliding_window is None:
                # Padding sits after each request's last query, so a causal mask alone never
                # lets a real query see a padded key.
                k = key[p.token_index].transpose(1, 2)
                v = value[p.token_index].transpose(1, 2)
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            else:
                k = _gather(key_cache, p.block_table).transpose(0, 1)
                v = _gather(value_cache, p.block_table).transpose(0, 1)
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=prefill_mask, scale=scale, enable_gqa=gqa
                )
            out = out.transpose(1, 2)  # [P, Qmax, H, Dh]
            output[p.token_index[p.query_valid]] = out[p.query_valid]
        return output


def _decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query token per request: two batched matmuls with the GQA group folded into rows.

    `key`/`value` are [kv_heads, R, L, head_dim]. torch's CPU flash kernel spends ~8 ms per
    layer on a 128-request decode batch (it tiles for long queries); these matmuls take ~1.
    """
    num_reqs, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[0]
    group = num_heads // num_kv_heads
    q = query.view(num_reqs, num_kv_heads, group, head_dim).transpose(0, 1)  # [Hk, R, G, Dh]
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [Hk, R, G, L]
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

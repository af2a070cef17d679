"""One attention step built by hand for backend tests: scattered block tables, the metadata,
and the requests' earlier context written into a cache.

Requests are (tokens cached before this step, tokens this step), decodes first. Block ids are
drawn from a seeded permutation, so tables are full of gaps and out of order. Options:
- `shared_prefix_blocks`: requests with at least that much cached context share the same
  physical blocks for it (a prefix hit: repeated ids across the table);
- `poison` with `window`: table entries of blocks wholly before a request's first visible
  position (first query position - window + 1), and entries past its last block, hold the
  id `poison` instead; the contract allows them to be anything, so a backend must never read
  them (`poison_cache` fills that block with NaN to make a read visible).
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.attention.metadata import AttentionMetadata


def make_step(
    backend,
    requests,
    num_blocks,
    seed,
    block_size,
    shared_prefix_blocks: int = 0,
    window: int | None = None,
    poison: int | None = None,
    extra_columns: int = 0,
):
    """(metadata planned by `backend`, slots of every request's cached context in order)."""
    rng = np.random.default_rng(seed)
    free = [int(b) for b in rng.permutation(np.arange(1, num_blocks)) if b != poison]
    shared = [free.pop() for _ in range(shared_prefix_blocks)]
    max_blocks = max(-(-(c + q) // block_size) for c, q in requests) + extra_columns
    table = np.full((len(requests), max_blocks), 0 if poison is None else poison, dtype=np.int32)
    slots, context_slots = [], []
    for r, (cached, q_len) in enumerate(requests):
        num_request_blocks = -(-(cached + q_len) // block_size)
        for j in range(num_request_blocks):
            use_shared = j < shared_prefix_blocks and cached >= shared_prefix_blocks * block_size
            table[r, j] = shared[j] if use_shared else free.pop()
        slot = lambda pos, r=r: int(table[r, pos // block_size]) * block_size + pos % block_size  # noqa: E731
        context_slots += [slot(pos) for pos in range(cached)]
        slots += [slot(pos) for pos in range(cached, cached + q_len)]
        if poison is not None and window is not None:
            first_visible = max(cached - window + 1, 0)
            table[r, : first_visible // block_size] = poison
    q_lens = np.array([q for _, q in requests])
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    seq_lens = np.array([c + q for c, q in requests])
    md = AttentionMetadata(
        num_reqs=len(requests),
        num_actual_tokens=int(qsl[-1]),
        query_start_loc=torch.from_numpy(qsl).to(torch.int32),
        seq_lens=torch.from_numpy(seq_lens).to(torch.int32),
        block_tables=[torch.from_numpy(table)],
        slot_mappings=[torch.tensor(slots, dtype=torch.int64)],
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
        num_decodes=int((q_lens == 1).sum()),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        block_size=block_size,
    )
    backend.plan(md)
    return md, torch.tensor(context_slots, dtype=torch.int64)


def write_row_context(cache, keys, values, slots):
    """Store earlier tokens' K/V in a row-order cache [2, kv_heads, blocks, block_size, head_dim].

    A slot listed twice (a block shared by two requests' prefixes) takes its first row only:
    `index_copy_` with repeated indices keeps an arbitrary one, and shared blocks hold one
    content, as a prefix hit's do."""
    _, first = np.unique(slots.numpy(), return_index=True)
    keep = torch.from_numpy(np.sort(first))
    keys, values, slots = keys[keep], values[keep], slots[keep]
    heads, dim = cache.shape[1], cache.shape[-1]
    cache[0].view(heads, -1, dim).index_copy_(1, slots, keys.transpose(0, 1).to(cache.dtype))
    cache[1].view(heads, -1, dim).index_copy_(1, slots, values.transpose(0, 1).to(cache.dtype))


def poison_cache(cache, block: int) -> None:
    """NaN in every K and V element of `block`: attending over any of it makes outputs NaN."""
    cache[:, :, block] = float("nan")

"""The fixed buffers a captured decode step reads, and how a step's inputs are copied in.

A graph replays the kernels it recorded on the same memory, so every input of a decode step
lives in a buffer allocated once for the largest captured batch: token ids, positions, and the
attention contract's tensors (query_start_loc is 0..n, one token per request). A step of n
decodes replayed as a batch of `size` >= n copies its n rows in and pads the rest so they are
harmless: token 0 at position 0, context length 1, table row of null blocks (block 0), and slot
-1, which the cache write skips. Table columns past a request's blocks may hold an earlier
step's ids; the kernels never read past a request's context length.
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.attention.metadata import AttentionMetadata


class DecodeGraphInputs:
    """Static decode-step buffers for batches up to `max_batch` (see the module docstring)."""

    def __init__(self, max_batch: int, max_blocks: int, num_groups: int, block_size: int, device):
        self.max_batch, self.max_blocks, self.block_size = max_batch, max_blocks, block_size
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.block_tables = [
            torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device) for _ in range(num_groups)
        ]
        self.slot_mappings = [
            torch.full((max_batch,), -1, dtype=torch.int64, device=device) for _ in range(num_groups)
        ]

    def metadata(self, size: int, max_seq_len: int) -> AttentionMetadata:
        """The contract for a batch of `size` decodes over these buffers. Host-side planning
        sees every context at `max_seq_len`, so what a backend plans from it (e.g. how many
        ranges to split a context into) holds for any step replayed at this size."""
        return AttentionMetadata(
            num_reqs=size,
            num_actual_tokens=size,
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=[table[:size] for table in self.block_tables],
            slot_mappings=[slots[:size] for slots in self.slot_mappings],
            max_query_len=1,
            max_seq_len=max_seq_len,
            num_decodes=size,
            query_start_loc_cpu=np.arange(size + 1),
            seq_lens_cpu=np.full(size, max_seq_len),
            block_size=self.block_size,
        )

    def fits(self, md: AttentionMetadata) -> bool:
        """Whether a decode-only step's tables fit these buffers."""
        return (
            md.num_reqs <= self.max_batch
            and len(md.block_tables) == len(self.block_tables)
            and all(table.shape[1] <= self.max_blocks for table in md.block_tables)
        )

    def load(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata, size: int
    ) -> None:
        """Copy a step of `md.num_reqs` decodes into rows [0, n) and pad rows [n, size)."""
        n = md.num_reqs
        self.input_ids[:n].copy_(input_ids[:n])
        self.positions[:n].copy_(positions[:n])
        self.seq_lens[:n].copy_(md.seq_lens[:n])
        for static, table in zip(self.block_tables, md.block_tables):
            static[:n, : table.shape[1]].copy_(table[:n])
        for static, slots in zip(self.slot_mappings, md.slot_mappings):
            static[:n].copy_(slots[:n])
        if size > n:
            self.input_ids[n:size].zero_()
            self.positions[n:size].zero_()
            self.seq_lens[n:size].fill_(1)
            for static in self.block_tables:
                static[n:size, 0].zero_()
            for static in self.slot_mappings:
                static[n:size].fill_(-1)

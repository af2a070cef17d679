"""Persistent [max_num_seqs, max_blocks_per_request] block tables, one per KV-cache group."""

from __future__ import annotations

import numpy as np


class PersistentBlockTable:
    """Rows are handed to requests; a step appends only its newly allocated block ids.

    Avoids rebuilding every request's full table each step (O(blocks) work); a step then
    gathers just the rows and columns it needs. A request owns the same row in every group's
    table; entries are indexed by logical block, so a sliding group's row has the same length
    as a full-attention one (its dropped entries are never read again).
    """

    def __init__(self, max_num_reqs: int, max_blocks_per_req: int, num_groups: int = 1):
        self.tables = [
            np.zeros((max_num_reqs, max_blocks_per_req), dtype=np.int32) for _ in range(num_groups)
        ]
        self.max_blocks_per_req = max_blocks_per_req
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))

    @property
    def num_groups(self) -> int:
        return len(self.tables)

    def acquire_row(self) -> int:
        if not self._free_rows:
            raise RuntimeError("no free block-table row: more running requests than max_num_seqs")
        return self._free_rows.pop()

    def release_row(self, row: int) -> None:
        self._free_rows.append(row)

    def write(self, row: int, starts: list[int], block_ids: tuple[list[int], ...]) -> list[int]:
        """Per group, write block ids at columns [start, start + len); returns the new lengths."""
        ends = []
        for table, start, ids in zip(self.tables, starts, block_ids, strict=True):
            end = start + len(ids)
            if end > self.max_blocks_per_req:
                raise RuntimeError(f"request needs {end} blocks, table holds {self.max_blocks_per_req}")
            table[row, start:end] = ids
            ends.append(end)
        return ends

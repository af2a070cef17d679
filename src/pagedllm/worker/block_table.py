"""A persistent [max_num_seqs, max_blocks_per_request] block table updated in place."""

from __future__ import annotations

import numpy as np


class PersistentBlockTable:
    """Rows are handed to requests; a step appends only its newly allocated block ids.

    Avoids rebuilding every request's full table each step (O(blocks) work); a step
    then gathers just the rows and columns it needs.
    """

    def __init__(self, max_num_reqs: int, max_blocks_per_req: int):
        self.table = np.zeros((max_num_reqs, max_blocks_per_req), dtype=np.int32)
        self.max_blocks_per_req = max_blocks_per_req
        self._free_rows = list(range(max_num_reqs - 1, -1, -1))

    def acquire_row(self) -> int:
        if not self._free_rows:
            raise RuntimeError("no free block-table row: more running requests than max_num_seqs")
        return self._free_rows.pop()

    def release_row(self, row: int) -> None:
        self._free_rows.append(row)

    def write(self, row: int, start: int, block_ids: list[int]) -> int:
        """Write block ids at columns [start, start + len); returns the new length."""
        end = start + len(block_ids)
        if end > self.max_blocks_per_req:
            raise RuntimeError(f"request needs {end} blocks, table holds {self.max_blocks_per_req}")
        self.table[row, start:end] = block_ids
        return end

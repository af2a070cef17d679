"""The attention contract: per-step tensors every backend reads.

For a step computing T tokens of R requests (decode requests ordered first):

    input token i belongs to request r where query_start_loc[r] <= i < query_start_loc[r+1]
    seq_lens[r]             = context length of r including this step's tokens
    block_tables[g][r, j]   = physical block of KV-cache group g holding tokens
                              [j*block_size, (j+1)*block_size) of r
    slot_mappings[g][i]     = block_id * block_size + offset where token i's K/V is written in
                              the layers of group g

Request r's new tokens occupy positions seq_lens[r] - q_len(r) .. seq_lens[r] - 1.

Layers are grouped by sliding window (see `pagedllm.core.kv_cache_spec`); each group has its
own block pool, so its own table and slot mapping, and each `Attention` layer knows its group.
In a sliding group (window w), entries of blocks that hold only positions before
`first query position - w + 1` are undefined (the null block or a stale id): backends never
read them. A model without sliding windows has exactly one group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    """One step's attention inputs (tensors on the model's device, plus CPU copies for planning)."""

    num_reqs: int
    num_actual_tokens: int
    query_start_loc: torch.Tensor  # [R + 1] int32
    seq_lens: torch.Tensor  # [R] int32
    block_tables: list[torch.Tensor]  # per KV-cache group: [R, max_blocks] int32
    slot_mappings: list[torch.Tensor]  # per KV-cache group: [T] int64
    max_query_len: int
    max_seq_len: int
    # Requests [0, num_decodes) have exactly one query token; they come first.
    num_decodes: int
    query_start_loc_cpu: np.ndarray
    seq_lens_cpu: np.ndarray
    block_size: int
    # Backend-private tensors built once per step and shared by all layers.
    plan: Any = None

    @property
    def num_kv_cache_groups(self) -> int:
        return len(self.block_tables)

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes

    @property
    def num_prefills(self) -> int:
        return self.num_reqs - self.num_decodes

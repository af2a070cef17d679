"""Builds one step's flat input tensors and attention metadata, vectorised over requests."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.worker.block_table import PersistentBlockTable
from pagedllm.worker.host_staging import HostStaging
from pagedllm.worker.request_state import RunnerRequestState


@dataclass
class StepInputs:
    """Model inputs for one step plus where each request's tokens sit in the flat batch."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn_metadata: AttentionMetadata
    query_start_loc: np.ndarray  # [R + 1]
    num_scheduled: np.ndarray  # [R]
    start_positions: np.ndarray  # [R]


def order_decodes_first(states: list[RunnerRequestState], num_scheduled: list[int]):
    """Single-token queries first, as the attention contract asks."""
    decodes = [i for i, n in enumerate(num_scheduled) if n == 1]
    prefills = [i for i, n in enumerate(num_scheduled) if n != 1]
    order = decodes + prefills
    return [states[i] for i in order], [num_scheduled[i] for i in order], len(decodes)


def build_step_inputs(
    states: list[RunnerRequestState],
    num_scheduled_list: list[int],
    num_decodes: int,
    block_table: PersistentBlockTable,
    block_size: int,
    backend: AttentionBackend,
    device: torch.device,
    staging: HostStaging | None = None,
) -> StepInputs:
    """Flat token ids and positions, query_start_loc, seq_lens, and per KV-cache group the
    block table and slot mapping; `backend` plans its per-step tensors from them. With
    `staging` (GPUs) the arrays go through its pinned buffers and are copied without blocking."""
    num_reqs = len(states)
    num_scheduled = np.asarray(num_scheduled_list, dtype=np.int64)
    starts = np.fromiter((s.num_computed_tokens for s in states), dtype=np.int64, count=num_reqs)
    query_start_loc = np.zeros(num_reqs + 1, dtype=np.int64)
    np.cumsum(num_scheduled, out=query_start_loc[1:])
    total = int(query_start_loc[-1])

    token_ids = np.fromiter(
        chain.from_iterable(
            s.token_ids[a : a + n] for s, a, n in zip(states, starts.tolist(), num_scheduled_list)
        ),
        dtype=np.int64,
        count=total,
    )
    req_index = np.repeat(np.arange(num_reqs), num_scheduled)
    positions = np.arange(total, dtype=np.int64) + np.repeat(starts - query_start_loc[:-1], num_scheduled)
    seq_lens = starts + num_scheduled
    max_seq_len = int(seq_lens.max())
    max_blocks = -(-max_seq_len // block_size)
    rows = np.fromiter((s.row for s in states), dtype=np.int64, count=num_reqs)
    logical_blocks, offsets = positions // block_size, positions % block_size

    def to_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        if staging is not None:
            return staging.to_device(array, dtype)
        return torch.from_numpy(array).to(device=device, dtype=dtype, non_blocking=True)

    tables, slot_mappings = [], []
    for group_table in block_table.tables:
        table = group_table[rows, :max_blocks]
        slots = table[req_index, logical_blocks].astype(np.int64) * block_size + offsets
        tables.append(to_device(np.ascontiguousarray(table), torch.int32))
        slot_mappings.append(to_device(slots, torch.int64))

    md = AttentionMetadata(
        num_reqs=num_reqs,
        num_actual_tokens=total,
        query_start_loc=to_device(query_start_loc, torch.int32),
        seq_lens=to_device(seq_lens, torch.int32),
        block_tables=tables,
        slot_mappings=slot_mappings,
        max_query_len=int(num_scheduled.max()),
        max_seq_len=max_seq_len,
        num_decodes=num_decodes,
        query_start_loc_cpu=query_start_loc,
        seq_lens_cpu=seq_lens,
        block_size=block_size,
    )
    backend.plan(md)
    return StepInputs(
        input_ids=to_device(token_ids, torch.int64),
        positions=to_device(positions, torch.int64),
        attn_metadata=md,
        query_start_loc=query_start_loc,
        num_scheduled=num_scheduled,
        start_positions=starts,
    )

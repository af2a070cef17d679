"""Pinned-buffer bookkeeping of step inputs (run here with unpinned buffers and a CPU target)."""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.worker.host_staging import HostStaging


def test_arrays_come_back_converted_and_aligned_in_one_arena_per_step():
    staging = HostStaging(torch.device("cpu"), pin=False)
    staging.begin_step()
    a = staging.to_device(np.arange(5, dtype=np.int64), torch.int32)
    b = staging.to_device(np.array([[1, 2], [3, 4]], dtype=np.int32), torch.int64)
    assert a.dtype == torch.int32 and a.tolist() == [0, 1, 2, 3, 4]
    assert b.dtype == torch.int64 and b.tolist() == [[1, 2], [3, 4]]
    arena = staging.arena
    assert a.data_ptr() == arena.data_ptr() and (b.data_ptr() - arena.data_ptr()) % 64 == 0
    staging.end_step()


def test_two_arenas_alternate_so_a_step_never_overwrites_the_previous_ones_inputs():
    staging = HostStaging(torch.device("cpu"), pin=False)
    pointers, previous = [], None
    for step in range(4):
        staging.begin_step()
        staged = staging.to_device(np.full(3, step, dtype=np.int64), torch.int64)
        if previous is not None:
            assert previous.tolist() == [step - 1] * 3  # still intact while this step fills the other
        pointers.append(staging.arena.data_ptr())
        previous = staged
        staging.end_step()
    assert pointers[0] == pointers[2] and pointers[1] == pointers[3] and pointers[0] != pointers[1]


def test_an_arena_too_small_for_a_step_grows():
    staging = HostStaging(torch.device("cpu"), pin=False)
    staging.begin_step()
    small = staging.to_device(np.arange(10, dtype=np.int64), torch.int64)
    big = staging.to_device(np.arange(300_000, dtype=np.int64), torch.int64)  # 2.4 MB > 1 MiB
    assert staging.arena.numel() >= 300_000 * 8
    assert small.tolist() == list(range(10)) and int(big[-1]) == 299_999
    staging.end_step()
    staging.begin_step()
    staging.begin_step(nbytes_hint=5 << 20)
    assert staging.arena.numel() >= 5 << 20

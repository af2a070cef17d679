"""The GPU's memory bandwidth as a large device-to-device copy sees it.

A copy reads each byte once and writes it once, so it moves twice its size; a buffer of a few
GiB is far beyond every cache, and the best of a few rounds of repeated copies is taken.
"""

from __future__ import annotations

import torch


def copy_bandwidth(nbytes: int = 4 << 30, copies: int = 10, rounds: int = 3) -> float:
    """Bytes per second (read + written) of `dst.copy_(src)` on the current CUDA device."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch outside the timing
    best = 0.0
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(copies):
            dst.copy_(src)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        best = max(best, 2 * nbytes * copies / seconds)
    del src, dst
    torch.cuda.empty_cache()
    return best

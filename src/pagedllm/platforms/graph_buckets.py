"""Which decode batch sizes get a captured graph, and which graph a step replays.

A graph replays fixed shapes, so decode steps are captured for a ladder of batch sizes and a
step of n decodes replays the smallest captured size >= n, its extra rows padding (they write
nothing and their outputs are dropped). Small sizes are all powers of two (single-stream and
small batches waste nothing), then every multiple of `STEP` up to `max_num_seqs`, so padding
costs at most STEP - 1 rows.
"""

from __future__ import annotations

import bisect

STEP = 8
_MAX_CAPTURED = 512


def capture_sizes(max_num_seqs: int, max_size: int = _MAX_CAPTURED) -> list[int]:
    """Batch sizes to capture, ascending: 1, 2, 4, then multiples of STEP, up to `max_num_seqs`."""
    limit = min(max_num_seqs, max_size)
    sizes = [size for size in (1, 2, 4) if size < min(limit, STEP)]
    sizes += list(range(STEP, limit + 1, STEP))
    if not sizes or sizes[-1] != limit:
        sizes.append(limit)
    return sizes


def bucket_for(num_decodes: int, sizes: list[int]) -> int | None:
    """The captured size a step of `num_decodes` decodes replays, or None (run eagerly)."""
    if num_decodes < 1:
        return None
    index = bisect.bisect_left(sizes, num_decodes)
    return sizes[index] if index < len(sizes) else None

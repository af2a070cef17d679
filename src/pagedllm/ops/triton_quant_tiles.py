"""Tile sizes of the Triton weight-only matmuls (ops/triton_quant_kernels.py), chosen by M.

Two regimes:

- **decode** (M <= DECODE_MAX_ROWS): memory-bound, every weight byte is read once per call. A
  program owns BLOCK_N output features and all (padded) rows of x, and streams its weight rows
  along K in long runs (128 values: 128 bytes of int8, 64 of packed 4-bit codes per row and
  iteration). When there are too few column tiles to fill the GPU, K is split among programs
  (split-K) whose float32 partial sums a second kernel adds up. The split depends only on
  (N, K), never on M: a row's sum is cut into the same K ranges at every decode batch size.
- **prefill** (larger M): a tiled GEMM, 64 or 128 rows by 128 features, 64 values of K per
  iteration; the weight tile is dequantized once per row tile and reused by all its rows.

No autotuning: the choice is this plain function, so every launch is known ahead (the compile
check builds exactly these) and tests can force any tiling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

DECODE_MAX_ROWS = 64
# tl.dot needs at least 16 rows, columns and K.
MIN_DOT = 16
MAX_SPLIT_K = 16
# Each split streams at least this many iterations of K (4 x 128 values), so the partial
# sums (M x N float32 per split) stay small next to the weight bytes a split reads.
MIN_ITERATIONS_PER_SPLIT = 4
# Programs per multiprocessor a decode launch aims for (latency hiding needs several).
PROGRAMS_PER_MULTIPROCESSOR = 2


@dataclass(frozen=True, slots=True)
class QuantTiles:
    """One launch's tiling: BLOCK_M x BLOCK_N outputs per program, BLOCK_K values of K per
    iteration (4-bit: a multiple of the group size 32), K cut into `split_k` ranges."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@functools.lru_cache(maxsize=4096)
def choose_tiles(m: int, n: int, k: int, multiprocessors: int) -> QuantTiles:
    """The tiling for x [m, k] @ W^T with W [n, k] on a GPU with `multiprocessors` SMs."""
    if m <= DECODE_MAX_ROWS:
        block_m = max(MIN_DOT, _next_power_of_2(m))
        block_n, block_k = 64, 128
        split = decode_split_k(n, k, block_n, block_k, multiprocessors)
        return QuantTiles(block_m, block_n, block_k, split, num_warps=4, num_stages=3)
    if m <= 128:
        return QuantTiles(64, 128, 64, 1, num_warps=4, num_stages=3)
    return QuantTiles(128, 128, 64, 1, num_warps=8, num_stages=3)


def decode_split_k(n: int, k: int, block_n: int, block_k: int, multiprocessors: int) -> int:
    """How many ranges of K a decode launch cuts the weight into: enough programs for
    PROGRAMS_PER_MULTIPROCESSOR per SM, each range at least MIN_ITERATIONS_PER_SPLIT long."""
    column_tiles = -(-n // block_n)
    wanted = -(-PROGRAMS_PER_MULTIPROCESSOR * multiprocessors // column_tiles)
    longest = -(-k // block_k) // MIN_ITERATIONS_PER_SPLIT
    return max(1, min(wanted, longest, MAX_SPLIT_K))


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()

"""Host-side planning of a step's kernel launches (numpy, once per step, shared by all layers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Rows of a query tile (tokens x query heads of one KV head) and keys per loop iteration: an
# accumulator of rows x head_dim float32 lives in registers, so heads above 128 take half.
_TILE_ROWS = 64
_KEYS_PER_ITERATION = 64
_LARGE_HEAD_DIM = 128
# Split-KV decode: each split attends at least this many positions, and at most this many splits.
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 16


@dataclass(frozen=True, slots=True)
class QueryTiles:
    """Tiles of `tokens_per_tile` consecutive query tokens, each within one request."""

    request: np.ndarray  # [tiles] int32: the tile's request
    first_token: np.ndarray  # [tiles] int32: the tile's first token in the step
    tokens_per_tile: int


def tokens_per_tile(group_size: int, head_dim: int) -> int:
    """Query tokens per tile when each token brings `group_size` query heads (padded to 2^k)."""
    group_pad = 1 << max(group_size - 1, 0).bit_length()
    rows = _TILE_ROWS if head_dim <= _LARGE_HEAD_DIM else _TILE_ROWS // 2
    return max(1, rows // group_pad)


def keys_per_iteration(head_dim: int) -> int:
    """Keys each iteration of the attention loops loads (a tile of K and one of V)."""
    return _KEYS_PER_ITERATION if head_dim <= _LARGE_HEAD_DIM else _KEYS_PER_ITERATION // 2


def plan_query_tiles(
    query_start_loc: np.ndarray, first_request: int, num_reqs: int, tile_tokens: int
) -> QueryTiles:
    """Cut requests [first_request, num_reqs) into tiles; O(requests) numpy, no per-token loop."""
    starts = query_start_loc[first_request:num_reqs].astype(np.int64)
    query_lens = query_start_loc[first_request + 1 : num_reqs + 1].astype(np.int64) - starts
    tiles_per_request = -(-query_lens // tile_tokens)
    request = np.repeat(np.arange(first_request, num_reqs, dtype=np.int64), tiles_per_request)
    first_tile = np.repeat(np.cumsum(tiles_per_request) - tiles_per_request, tiles_per_request)
    within = np.arange(request.shape[0], dtype=np.int64) - first_tile
    first_token = query_start_loc[request].astype(np.int64) + within * tile_tokens
    return QueryTiles(request.astype(np.int32), first_token.astype(np.int32), tile_tokens)


def decode_splits(
    num_decodes: int,
    num_kv_heads: int,
    longest_context: int,
    num_processors: int,
    min_keys_per_split: int = MIN_KEYS_PER_SPLIT,
    max_splits: int = MAX_SPLITS,
) -> int:
    """How many ranges to split each decode's context into.

    Splitting adds a combine pass, so it is worth it only when the decode programs (one per
    request and KV head) leave processors idle and the contexts are long enough that each split
    still streams at least `min_keys_per_split` keys.
    """
    programs = num_decodes * num_kv_heads
    if programs == 0 or programs >= num_processors:
        return 1
    wanted = -(-num_processors // programs)
    by_length = max(1, longest_context // min_keys_per_split)
    return int(max(1, min(wanted, by_length, max_splits)))

"""KV-cache groups: the attention layers that share one block table.

Layers are grouped by their sliding window. A model without windows (Llama) has one
full-attention group; Mistral has one sliding group; Gemma 3 has a full-attention group
(every sixth layer) and a sliding group (the other five of six)::

    layer      0    1    2    3    4    5    6   ...
    window    512  512  512  512  512  full 512
    group      1    1    1    1    1    0    1

Every group has its own block pool and its own block table per request; a layer's KV tensor
holds its group's blocks only. A sliding group hands back blocks that fell out of every
future query's window, so a request holds at most `ceil(window / block_size) + 1` of its
blocks while decoding, however long its context grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class KVCacheGroupSpec:
    """One group: its window (None for full attention) and the usable blocks of its pool."""

    sliding_window: int | None
    num_blocks: int

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"a KV-cache group needs at least one block, got {self.num_blocks}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")

    def max_blocks_per_request(self, num_tokens: int, block_size: int, max_chunk: int) -> int:
        """The most blocks one request of `num_tokens` tokens holds at once in this group.

        Full attention keeps every block. A sliding group keeps, while computing a chunk of at
        most `max_chunk` tokens, the `window - 1` tokens before the chunk plus the chunk itself,
        which may straddle one more block boundary than their count suggests.
        """
        every_block = cdiv(num_tokens, block_size)
        if self.sliding_window is None:
            return every_block
        return min(every_block, cdiv(self.sliding_window - 1 + max_chunk, block_size) + 1)


def group_layers(layer_windows: Sequence[int | None]) -> tuple[list[int | None], list[int]]:
    """(window of each group, group of each layer): full attention first, then windows ascending."""
    windows = sorted(set(layer_windows), key=lambda w: -1 if w is None else w)
    index = {window: i for i, window in enumerate(windows)}
    return windows, [index[w] for w in layer_windows]


def request_capacity_blocks(
    specs: Sequence[KVCacheGroupSpec], block_size: int, max_chunk: int, max_model_len: int
) -> int:
    """How many blocks' worth of tokens one request may span so that every group can hold it.

    Full-attention groups (and sliding pools too small for a window) limit it to their size;
    a sliding pool that holds a whole window never does. Without any limit, the context length.
    """
    limits = [
        spec.num_blocks
        for spec in specs
        if spec.sliding_window is None
        or spec.max_blocks_per_request(max_model_len, block_size, max_chunk) > spec.num_blocks
    ]
    if limits:
        return min(limits)
    return max(cdiv(max_model_len, block_size), *(spec.num_blocks for spec in specs))

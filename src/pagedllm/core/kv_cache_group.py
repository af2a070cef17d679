"""One KV-cache group's block lists: full attention, or a sliding window that drops old blocks.

Each group owns a block pool and every request's list of blocks in it, indexed by logical
block (block i holds tokens [i * block_size, (i + 1) * block_size)). A sliding group replaces
blocks that no future query can see by the null block and returns them to its pool. With
block_size 4 and window 6, once the request's next query is at position 13 it sees tokens
8..13, so blocks 0 and 1 are dropped::

    tokens   | 0  1  2  3 | 4  5  6  7 | 8  9 10 11 | 12 13 . . |
    blocks     null         null         b7           b9
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, cdiv


class FullAttentionGroup:
    """Keeps every block of a request; a prefix hit must cover the prefix from its first block."""

    def __init__(self, spec: KVCacheGroupSpec, block_size: int):
        self.spec = spec
        self.block_size = block_size
        self.block_pool = BlockPool(spec.num_blocks)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many leading blocks of each request are already entered in the hash map.
        self.num_cached_blocks: dict[str, int] = {}

    @property
    def sliding_window(self) -> int | None:
        return self.spec.sliding_window

    def lookup(self, block_hashes: Sequence[bytes], tokens: Sequence[int], index: int) -> KVCacheBlock | None:
        bs = self.block_size
        return self.block_pool.get_cached_block(block_hashes[index], tokens[index * bs : (index + 1) * bs])

    def longest_hit(
        self, block_hashes: Sequence[bytes], tokens: Sequence[int], max_blocks: int
    ) -> list[KVCacheBlock]:
        """The blocks of the longest hit of at most `max_blocks` blocks (its length is the list's)."""
        hits: list[KVCacheBlock] = []
        for i in range(max_blocks):
            block = self.lookup(block_hashes, tokens, i)
            if block is None:
                break  # hashes chain: nothing after a miss can match
            hits.append(block)
        return hits

    def remove_skipped_blocks(self, request_id: str, num_computed_tokens: int) -> None:
        """Full attention needs every block: nothing to drop."""

    def num_new_blocks(self, request_id: str, num_tokens: int, hit_blocks: list[KVCacheBlock]) -> int:
        """Fresh blocks needed to hold `num_tokens` tokens after taking `hit_blocks`."""
        held = len(self.req_to_blocks.get(request_id, ())) + len(hit_blocks)
        return max(cdiv(num_tokens, self.block_size) - held, 0)

    def num_free_for(self, hit_blocks: list[KVCacheBlock]) -> int:
        """Blocks left to allocate once `hit_blocks` are taken (touching a free cached block uses it up)."""
        return self.block_pool.num_free_blocks - sum(1 for block in hit_blocks if block.ref_cnt == 0)

    def allocate(self, request_id: str, hit_blocks: list[KVCacheBlock], num_fresh: int) -> list[KVCacheBlock]:
        """Append hit blocks then fresh ones to the request's list; returns what was appended."""
        blocks = self.req_to_blocks.setdefault(request_id, [])
        if request_id not in self.num_cached_blocks:
            self.num_cached_blocks[request_id] = len(hit_blocks)
        self.block_pool.touch(hit_blocks)
        new_blocks = hit_blocks + self.block_pool.get_new_blocks(num_fresh)
        blocks.extend(new_blocks)
        return new_blocks

    def cache_full_blocks(
        self, request_id: str, num_full_blocks: int, block_hashes: Sequence[bytes], tokens: Sequence[int]
    ) -> None:
        """Enter the request's blocks [already cached, num_full_blocks) into the hash map."""
        start = self.num_cached_blocks[request_id]
        if num_full_blocks <= start:
            return
        bs = self.block_size
        self.block_pool.cache_full_blocks(
            self.req_to_blocks[request_id][start:num_full_blocks],
            block_hashes[start:num_full_blocks],
            [tokens[i * bs : (i + 1) * bs] for i in range(start, num_full_blocks)],
        )
        self.num_cached_blocks[request_id] = num_full_blocks

    def free(self, request_id: str) -> None:
        """Release the request's blocks, last block first (evicted first)."""
        blocks = self.req_to_blocks.pop(request_id, None)
        self.num_cached_blocks.pop(request_id, None)
        if blocks:
            self.block_pool.free_blocks(reversed(blocks))

    def block_ids(self, request_id: str) -> list[int]:
        return [block.block_id for block in self.req_to_blocks.get(request_id, ())]

    def num_held_blocks(self, request_id: str) -> int:
        """Real (non-null) blocks the request holds in this group."""
        null = self.block_pool.null_block
        return sum(1 for block in self.req_to_blocks.get(request_id, ()) if block is not null)


class SlidingWindowGroup(FullAttentionGroup):
    """Layers that see only the last `window` positions (the query's own included).

    A query at position p attends to keys in (p - window, p]. Once a request's next query is
    at position q, no query of it will read a block whose last token is before
    q - window + 1: that block goes back to the pool (its hash stays cached) and the
    request's entry becomes the null block.
    """

    def __init__(self, spec: KVCacheGroupSpec, block_size: int):
        if spec.sliding_window is None:
            raise ValueError("a sliding-window group needs a window")
        super().__init__(spec, block_size)
        self.window = spec.sliding_window

    def first_needed_block(self, num_computed_tokens: int) -> int:
        """The first block a query at position `num_computed_tokens` or later can still read."""
        return max(num_computed_tokens - self.window + 1, 0) // self.block_size

    def remove_skipped_blocks(self, request_id: str, num_computed_tokens: int) -> None:
        """Null out and free the blocks before the window of the request's next query.

        Walks back from the window's start to the first null entry, so a step costs O(blocks
        dropped), usually nothing. Older blocks are freed first (evicted first).
        """
        blocks = self.req_to_blocks.get(request_id)
        if not blocks:
            return
        null = self.block_pool.null_block
        end = min(self.first_needed_block(num_computed_tokens), len(blocks))
        start = end
        while start > 0 and blocks[start - 1] is not null:
            start -= 1
        if start == end:
            return
        dropped = blocks[start:end]
        blocks[start:end] = [null] * (end - start)
        self.block_pool.free_blocks(dropped)

    def longest_hit(
        self, block_hashes: Sequence[bytes], tokens: Sequence[int], max_blocks: int
    ) -> list[KVCacheBlock]:
        """The longest hit of n <= max_blocks blocks whose in-window blocks are all cached.

        A hit of n blocks is servable when blocks [first_needed_block(n * bs), n) are cached;
        the blocks before them are returned as null blocks. Scans from the right: a miss at
        block i rules out every n whose window covers i, so the next candidate is n = i.
        """
        n = max_blocks
        run: list[KVCacheBlock] = []  # cached blocks ending at block n - 1, newest first
        while n > 0:
            first = self.first_needed_block(n * self.block_size)
            if len(run) >= n - first:
                return [self.block_pool.null_block] * first + run[: n - first][::-1]
            index = n - 1 - len(run)
            block = self.lookup(block_hashes, tokens, index)
            if block is None:
                n, run = index, []
            else:
                run.append(block)
        return []


def make_group(spec: KVCacheGroupSpec, block_size: int) -> FullAttentionGroup:
    """The manager class for a group's kind of attention."""
    if spec.sliding_window is None:
        return FullAttentionGroup(spec, block_size)
    return SlidingWindowGroup(spec, block_size)

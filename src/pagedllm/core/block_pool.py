"""The pool of physical KV cache blocks, its LRU free queue and the prefix-cache hash map.

Physical layout of the KV tensor (num_blocks = 4)::

    block id   0      1      2      3      4
             [null] [    usable: handed to requests    ]

Block 0 is the reserved null block: never handed out, never freed (a placeholder in block
tables, e.g. for tokens that fell out of a sliding window). The KV tensor therefore holds
num_blocks + 1 blocks.

A block is in exactly one of three states:
  * held:          ref_cnt > 0, owned by one or more requests (shared prefix blocks);
  * free + cached: ref_cnt == 0, still in the hash map, so a later request can reuse its KV;
  * free:          ref_cnt == 0, no hash.
Every block with ref_cnt == 0 sits in the free queue. Allocation pops from the head (least
recently freed) and evicts the block's hash, so cached blocks live until they are reused.

`BlockPool.states` mirrors those three states as one byte per block (BLOCK_FREE, BLOCK_IN_USE,
BLOCK_CACHED), written at each transition: a picture of the whole pool (the web console's grid)
is then a copy of a bytearray, not a walk over tens of thousands of block objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

NULL_BLOCK_ID = 0

# One byte per block in `BlockPool.states`.
BLOCK_FREE = 0
BLOCK_IN_USE = 1
BLOCK_CACHED = 2


@dataclass(slots=True, eq=False)
class KVCacheBlock:
    """Metadata of one physical block; prev_free/next_free link it into the free queue."""

    block_id: int
    ref_cnt: int = 0
    # Set while the block is in the hash map (full and cached); None otherwise.
    block_hash: bytes | None = None
    # The block's tokens, compared on lookup so a hash collision can never give a false hit.
    token_ids: tuple[int, ...] | None = None
    prev_free: KVCacheBlock | None = None
    next_free: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class FreeBlockQueue:
    """Doubly linked list of free blocks with O(1) popleft, append and remove.

    Head = next block to reuse (freed longest ago), tail = freed most recently::

        head <-> b3 <-> b7 <-> b1 <-> tail
    """

    def __init__(self, blocks: Iterable[KVCacheBlock]):
        self._head = KVCacheBlock(block_id=-1)
        self._tail = KVCacheBlock(block_id=-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self.num_free_blocks = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self.num_free_blocks

    def __iter__(self) -> Iterator[KVCacheBlock]:
        node = self._head.next_free
        while node is not self._tail:
            yield node
            node = node.next_free

    def popleft(self) -> KVCacheBlock:
        """Take the least recently freed block."""
        block = self._head.next_free
        if block is self._tail:
            raise ValueError("no free blocks left")
        self.remove(block)
        return block

    def append(self, block: KVCacheBlock) -> None:
        """Put a block at the tail (it will be reused last)."""
        last = self._tail.prev_free
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self.num_free_blocks += 1

    def remove(self, block: KVCacheBlock) -> None:
        """Unlink a block from anywhere in the queue."""
        if block.prev_free is None or block.next_free is None:
            raise ValueError(f"block {block.block_id} is not in the free queue")
        block.prev_free.next_free = block.next_free
        block.next_free.prev_free = block.prev_free
        block.prev_free = block.next_free = None
        self.num_free_blocks -= 1


class BlockPool:
    """Hands out physical blocks, takes them back, and remembers full blocks by hash."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVCacheBlock(block_id=i) for i in range(num_blocks + 1)]
        self.null_block = self.blocks[NULL_BLOCK_ID]
        self.null_block.ref_cnt = 1  # permanently held: never enters the free queue
        self.free_queue = FreeBlockQueue(self.blocks[1:])
        self.cached_blocks: dict[bytes, KVCacheBlock] = {}
        # Indexed by block id; the null block counts as in use.
        self.states = bytearray(num_blocks + 1)
        self.states[NULL_BLOCK_ID] = BLOCK_IN_USE

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be allocated now (free, cached or not)."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests (free cached blocks do not count)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Allocate blocks from the head of the free queue, evicting their cached hashes."""
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot allocate {num_blocks} blocks, only {self.num_free_blocks} free")
        new_blocks = []
        states = self.states
        for _ in range(num_blocks):
            block = self.free_queue.popleft()
            self._evict(block)
            block.ref_cnt = 1
            states[block.block_id] = BLOCK_IN_USE
            new_blocks.append(block)
        return new_blocks

    def free_blocks(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference to each block; blocks reaching 0 go to the free tail in order.

        Callers pass a request's blocks in reverse so its last blocks (the least shareable)
        are evicted before its first ones.
        """
        for block in blocks:
            if block is self.null_block:
                continue
            block.ref_cnt -= 1
            if block.ref_cnt < 0:
                raise RuntimeError(f"block {block.block_id} freed more often than allocated")
            if block.ref_cnt == 0:
                self.free_queue.append(block)
                self.states[block.block_id] = BLOCK_FREE if block.block_hash is None else BLOCK_CACHED

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, pulling free ones out of the free queue.

        Null entries (a sliding window's dropped blocks) are skipped.
        """
        for block in blocks:
            if block is self.null_block:
                continue
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
                self.states[block.block_id] = BLOCK_IN_USE
            block.ref_cnt += 1

    def get_cached_block(self, block_hash: bytes, token_ids: Sequence[int]) -> KVCacheBlock | None:
        """The cached block with this hash, only if it also holds exactly these tokens."""
        block = self.cached_blocks.get(block_hash)
        if block is None or block.token_ids != tuple(token_ids):
            return None
        return block

    def cache_full_blocks(
        self,
        blocks: Sequence[KVCacheBlock],
        block_hashes: Sequence[bytes],
        block_token_ids: Sequence[Sequence[int]],
    ) -> None:
        """Enter full blocks into the hash map; the three sequences are aligned per block.

        A hash already mapped to another block (the same prefix computed twice, or a
        collision) keeps its first block; the newcomer simply stays uncached.
        """
        for block, block_hash, token_ids in zip(blocks, block_hashes, block_token_ids, strict=True):
            if block is self.null_block or block.block_hash is not None or block_hash in self.cached_blocks:
                continue
            block.block_hash = block_hash
            block.token_ids = tuple(token_ids)
            self.cached_blocks[block_hash] = block
            if block.ref_cnt == 0:
                self.states[block.block_id] = BLOCK_CACHED

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is held by a request."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks[1:]:
            block.block_hash = None
            block.token_ids = None
        self.cached_blocks.clear()
        self.states[1:] = bytes(self.num_blocks)
        return True

    def free_block_ids(self) -> list[int]:
        """Free block ids from head (reused next) to tail; O(free blocks), for tests and debugging."""
        return [block.block_id for block in self.free_queue]

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        if self.cached_blocks.get(block.block_hash) is block:
            del self.cached_blocks[block.block_hash]
        block.block_hash = None
        block.token_ids = None

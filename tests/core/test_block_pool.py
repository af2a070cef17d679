"""BlockPool and FreeBlockQueue: exact block ids, free-queue order, ref counts, hash map."""

import pytest

from pagedllm.core.block_pool import BlockPool, FreeBlockQueue, KVCacheBlock


def h(i: int) -> bytes:
    return bytes([i]) * 32


def test_initial_state_reserves_null_block():
    pool = BlockPool(10)
    assert len(pool.blocks) == 11  # the KV tensor holds num_blocks + 1 blocks
    assert pool.null_block.block_id == 0
    assert pool.free_block_ids() == list(range(1, 11))
    assert pool.num_free_blocks == 10
    assert pool.usage == 0.0


def test_rejects_empty_pool():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(0)


def test_get_new_blocks_takes_from_head():
    pool = BlockPool(10)
    blocks = pool.get_new_blocks(3)
    assert [b.block_id for b in blocks] == [1, 2, 3]
    assert all(b.ref_cnt == 1 for b in blocks)
    assert pool.free_block_ids() == [4, 5, 6, 7, 8, 9, 10]
    assert pool.usage == pytest.approx(0.3)


def test_get_new_blocks_beyond_free_raises():
    pool = BlockPool(4)
    pool.get_new_blocks(3)
    with pytest.raises(ValueError, match="only 1 free"):
        pool.get_new_blocks(2)
    assert pool.num_free_blocks == 1


def test_free_in_reverse_puts_last_block_first_for_eviction():
    pool = BlockPool(10)
    a = pool.get_new_blocks(3)  # 1, 2, 3
    b = pool.get_new_blocks(2)  # 4, 5
    pool.free_blocks(reversed(a))
    assert pool.free_block_ids() == [6, 7, 8, 9, 10, 3, 2, 1]
    pool.free_blocks(reversed(b))
    assert pool.free_block_ids() == [6, 7, 8, 9, 10, 3, 2, 1, 5, 4]
    # Reuse follows the queue: never-used blocks first, then the least recently freed.
    assert [x.block_id for x in pool.get_new_blocks(7)] == [6, 7, 8, 9, 10, 3, 2]


def test_shared_block_ref_counts():
    pool = BlockPool(10)
    (block,) = pool.get_new_blocks(1)
    pool.touch([block])  # a second request shares it
    assert block.ref_cnt == 2
    pool.free_blocks([block])
    assert block.ref_cnt == 1
    assert 1 not in pool.free_block_ids()
    pool.free_blocks([block])
    assert block.ref_cnt == 0
    assert pool.free_block_ids()[-1] == 1


def test_touch_free_block_removes_it_from_middle_of_queue():
    pool = BlockPool(5)
    blocks = pool.get_new_blocks(5)
    pool.free_blocks(blocks)  # queue: 1 2 3 4 5
    pool.touch([blocks[2]])
    assert pool.free_block_ids() == [1, 2, 4, 5]
    assert blocks[2].ref_cnt == 1
    assert pool.num_free_blocks == 4
    assert pool.usage == pytest.approx(0.2)


def test_double_free_raises():
    pool = BlockPool(3)
    (block,) = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free_blocks([block])


def test_null_block_is_never_freed():
    pool = BlockPool(3)
    pool.free_blocks([pool.null_block])
    assert pool.free_block_ids() == [1, 2, 3]
    assert pool.null_block.ref_cnt == 1


def test_cached_block_is_found_with_matching_tokens_only():
    pool = BlockPool(4)
    (block,) = pool.get_new_blocks(1)
    pool.cache_full_blocks([block], [h(1)], [[5, 6, 7, 8]])
    assert pool.get_cached_block(h(1), [5, 6, 7, 8]) is block
    assert pool.get_cached_block(h(1), (5, 6, 7, 8)) is block
    assert pool.get_cached_block(h(1), [5, 6, 7, 9]) is None  # same hash, other tokens
    assert pool.get_cached_block(h(2), [5, 6, 7, 8]) is None


def test_free_cached_block_stays_matchable_until_reused():
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    pool.cache_full_blocks(blocks[:1], [h(1)], [[1, 2, 3, 4]])
    pool.free_blocks(blocks)  # queue: 1 2 3; block 1 still cached
    assert pool.get_cached_block(h(1), [1, 2, 3, 4]) is blocks[0]
    assert pool.usage == 0.0  # free cached blocks do not count as used
    (reused,) = pool.get_new_blocks(1)  # the head, block 1: its hash is evicted
    assert reused is blocks[0]
    assert reused.block_hash is None and reused.token_ids is None
    assert pool.get_cached_block(h(1), [1, 2, 3, 4]) is None
    assert h(1) not in pool.cached_blocks


def test_duplicate_hash_keeps_first_block():
    pool = BlockPool(4)
    a, b = pool.get_new_blocks(2)
    pool.cache_full_blocks([a], [h(1)], [[1, 1, 1, 1]])
    pool.cache_full_blocks([b], [h(1)], [[1, 1, 1, 1]])
    assert pool.cached_blocks[h(1)] is a
    assert b.block_hash is None
    # Evicting the uncached duplicate must not drop the first block's entry.
    pool.free_blocks([b])
    pool.get_new_blocks(3)
    assert pool.cached_blocks[h(1)] is a


def test_reset_prefix_cache_only_when_nothing_is_held():
    pool = BlockPool(2)
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(blocks, [h(3)], [[0, 0, 0, 0]])
    assert pool.reset_prefix_cache() is False
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache() is True
    assert pool.cached_blocks == {}
    assert blocks[0].block_hash is None


def test_free_queue_operations():
    nodes = [KVCacheBlock(block_id=i) for i in range(5)]
    queue = FreeBlockQueue(nodes)
    queue.remove(nodes[0])  # head
    queue.remove(nodes[4])  # tail
    queue.remove(nodes[2])  # middle
    assert [b.block_id for b in queue] == [1, 3]
    queue.append(nodes[2])
    assert [b.block_id for b in queue] == [1, 3, 2]
    assert queue.popleft() is nodes[1]
    assert len(queue) == 2
    with pytest.raises(ValueError, match="not in the free queue"):
        queue.remove(nodes[1])
    queue.popleft()
    queue.popleft()
    with pytest.raises(ValueError, match="no free blocks"):
        queue.popleft()


def test_states_follow_each_transition():
    """The byte per block (free / in use / cached) that the web console's snapshot copies."""
    from pagedllm.core.block_pool import BLOCK_CACHED as C
    from pagedllm.core.block_pool import BLOCK_FREE as F
    from pagedllm.core.block_pool import BLOCK_IN_USE as U

    pool = BlockPool(4)
    assert bytes(pool.states) == bytes([U, F, F, F, F])  # the null block counts as in use
    a = pool.get_new_blocks(2)  # 1, 2
    pool.cache_full_blocks(a[:1], [h(1)], [[1, 2]])
    assert bytes(pool.states[1:]) == bytes([U, U, F, F])
    pool.free_blocks(reversed(a))
    assert bytes(pool.states[1:]) == bytes([C, F, F, F])
    pool.touch([a[0]])  # a prefix hit takes the cached block back
    assert bytes(pool.states[1:]) == bytes([U, F, F, F])
    pool.free_blocks([a[0]])
    # Allocation reuses the oldest free blocks (3, 4, 2) and evicts nothing cached yet.
    b = pool.get_new_blocks(3)
    assert bytes(pool.states[1:]) == bytes([C, U, U, U])
    pool.get_new_blocks(1)  # only block 1 is left: its hash is evicted
    assert bytes(pool.states[1:]) == bytes([U, U, U, U])
    pool.free_blocks(b)
    assert pool.reset_prefix_cache() is False  # block 1 still held
    pool.free_blocks([a[0]])
    assert pool.reset_prefix_cache() is True
    assert bytes(pool.states[1:]) == bytes([F, F, F, F])

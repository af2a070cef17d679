"""KVCacheManager: block tables, prefix hits, sharing, collisions, salts and counters."""

import hashlib

import pytest

from pagedllm.core import block_hash
from pagedllm.core.kv_cache_manager import KVCacheManager


def manager(num_blocks=10, block_size=4, enable_caching=True):
    return KVCacheManager(num_blocks, block_size, enable_caching, hash_seed=b"seed")


def run_prefill(kv, request):
    """Allocate the whole prompt after a prefix lookup, as the scheduler would."""
    hits, num_hit = kv.get_computed_blocks(request)
    new_ids = kv.allocate_slots(request, request.num_tokens - num_hit, hits, num_hit)
    request.num_computed_tokens = request.num_tokens
    return new_ids, num_hit


def test_allocate_exact_block_ids_and_free_order(make_request):
    kv = manager()
    a, b = make_request(range(10)), make_request(range(100, 105))
    assert kv.allocate_slots(a, 10) == ([1, 2, 3],)
    assert kv.allocate_slots(b, 5) == ([4, 5],)
    assert kv.get_block_ids(a) == ([1, 2, 3],)
    assert kv.usage == pytest.approx(0.5)
    kv.free(a)
    assert kv.groups[0].block_pool.free_block_ids() == [6, 7, 8, 9, 10, 3, 2, 1]
    assert kv.get_block_ids(a) == ([],)
    kv.free(b)
    assert kv.num_free_blocks == 10 and kv.usage == 0.0


def test_full_blocks_are_cached_on_allocation(make_request):
    kv = manager()
    a = make_request(range(10))
    kv.allocate_slots(a, 10)
    pool = kv.groups[0].block_pool
    assert len(a.block_hashes) == 2
    assert [pool.cached_blocks[h].block_id for h in a.block_hashes] == [1, 2]
    assert pool.blocks[3].block_hash is None  # partly filled


def test_chunked_prefill_caches_blocks_as_chunks_fill_them(make_request):
    kv = manager()
    a = make_request(range(10))
    kv.allocate_slots(a, 6)
    assert kv.get_block_ids(a) == ([1, 2],)
    assert kv.groups[0].num_cached_blocks[a.request_id] == 1  # tokens 4..5 of block 2 only
    a.num_computed_tokens = 6
    assert kv.allocate_slots(a, 4) == ([3],)
    assert kv.groups[0].num_cached_blocks[a.request_id] == 2


def test_decode_caches_block_when_its_last_token_arrives(make_request):
    kv = manager()
    a = make_request(range(6))
    kv.allocate_slots(a, 6)
    a.num_computed_tokens = 6
    for token in (6, 7):
        a.append_output_token(token)
        assert kv.allocate_slots(a, 1) == ([],)
        a.num_computed_tokens += 1
    assert kv.groups[0].block_pool.cached_blocks[a.block_hashes[1]].block_id == 2
    a.append_output_token(8)
    assert kv.allocate_slots(a, 1) == ([3],)


def test_prefix_hit_reuses_freed_cached_blocks(make_request):
    kv = manager()
    a = make_request(range(10))
    run_prefill(kv, a)
    kv.free(a)
    assert kv.groups[0].block_pool.free_block_ids() == [4, 5, 6, 7, 8, 9, 10, 3, 2, 1]
    b = make_request([*range(10), 99])
    new_ids, num_hit = run_prefill(kv, b)
    assert num_hit == 8
    assert new_ids == ([1, 2, 4],)
    assert [kv.groups[0].block_pool.blocks[i].ref_cnt for i in (1, 2, 4)] == [1, 1, 1]
    assert kv.groups[0].block_pool.free_block_ids() == [5, 6, 7, 8, 9, 10, 3]
    assert kv.prefix_cache_queries == 10 + 11 and kv.prefix_cache_hits == 8


def test_last_prompt_token_is_always_recomputed(make_request):
    kv = manager()
    a = make_request(range(8))
    run_prefill(kv, a)
    kv.free(a)  # queue: 3..10, 2, 1 ; blocks 1 and 2 cached
    b = make_request(range(8))  # block 2 is full only with the last token
    hits, num_hit = kv.get_computed_blocks(b)
    assert [blk.block_id for blk in hits[0]] == [1] and num_hit == 4
    assert kv.allocate_slots(b, 4, hits, num_hit) == ([1, 3],)
    # Block 3 holds the same tokens as block 2, which keeps the hash; block 2 stays matchable.
    assert kv.groups[0].block_pool.blocks[3].block_hash is None
    c = make_request([*range(8), 42])
    hits, num_hit = kv.get_computed_blocks(c)
    assert [blk.block_id for blk in hits[0]] == [1, 2] and num_hit == 8


def test_shared_prefix_ref_counts(make_request):
    kv = manager()
    a, b = make_request(range(9)), make_request([*range(8), 50, 51])
    run_prefill(kv, a)
    new_ids, num_hit = run_prefill(kv, b)
    assert num_hit == 8 and new_ids == ([1, 2, 4],)
    pool = kv.groups[0].block_pool
    assert [pool.blocks[i].ref_cnt for i in (1, 2, 3, 4)] == [2, 2, 1, 1]
    assert kv.usage == pytest.approx(0.4)
    kv.free(a)
    assert [pool.blocks[i].ref_cnt for i in (1, 2, 3, 4)] == [1, 1, 0, 1]
    assert pool.free_block_ids()[-1] == 3
    kv.free(b)
    assert pool.free_block_ids()[-4:] == [3, 4, 2, 1]
    assert kv.num_free_blocks == 10


def test_allocation_counts_touched_free_blocks(make_request):
    kv = manager(num_blocks=4)
    a = make_request(range(8))
    run_prefill(kv, a)
    kv.free(a)  # queue: 3, 4, 2, 1 (1 and 2 cached)
    c = make_request(range(100, 108))
    assert kv.allocate_slots(c, 8) == ([3, 4],)
    b = make_request([*range(8), 9])
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 8
    # Two blocks are free, but both are the hit blocks themselves: no room for the third.
    assert kv.allocate_slots(b, 1, hits, num_hit) is None
    assert kv.groups[0].block_pool.free_block_ids() == [2, 1]
    assert [blk.ref_cnt for blk in hits[0]] == [0, 0]
    assert b.request_id not in kv.groups[0].req_to_blocks
    assert kv.prefix_cache_queries == 8 + 8  # b was not scheduled, so not counted
    kv.free(c)
    assert kv.allocate_slots(b, 1, hits, num_hit) == ([1, 2, 4],)


def test_prompt_logprobs_and_disabled_caching_skip_lookup(make_request):
    kv = manager()
    run_prefill(kv, make_request(range(9)))
    assert kv.get_computed_blocks(make_request(range(9), prompt_logprobs=1)) == (([],), 0)
    off = manager(enable_caching=False)
    a = make_request(range(9))
    run_prefill(off, a)
    off.free(a)
    assert off.get_computed_blocks(make_request(range(9))) == (([],), 0)
    assert off.groups[0].block_pool.cached_blocks == {} and a.block_hashes == []
    assert off.prefix_cache_queries == 0


def test_hash_collision_never_gives_a_false_hit(make_request, monkeypatch):
    # Every block hash depends on the parent only: different tokens collide on purpose.
    monkeypatch.setattr(
        block_hash, "hash_block_tokens", lambda parent, tokens, extra=b"": hashlib.sha256(parent).digest()
    )
    kv = manager()
    a = make_request([1, 2, 3, 4, 5, 6, 7, 8, 9])
    run_prefill(kv, a)
    kv.free(a)
    other_first = make_request([7, 7, 7, 7, 5, 6, 7, 8, 9])
    assert other_first.request_id != a.request_id
    assert kv.get_computed_blocks(other_first) == (([],), 0)
    other_second = make_request([1, 2, 3, 4, 0, 0, 0, 0, 9])
    hits, num_hit = kv.get_computed_blocks(other_second)
    assert num_hit == 4 and [blk.block_id for blk in hits[0]] == [1]
    assert kv.get_computed_blocks(make_request([1, 2, 3, 4, 5, 6, 7, 8, 0]))[1] == 8


def test_cache_salt_isolates_requests(make_request):
    kv = manager()
    a = make_request(range(9), cache_salt="tenant-x")
    run_prefill(kv, a)
    kv.free(a)
    assert kv.get_computed_blocks(make_request(range(9)))[1] == 0
    assert kv.get_computed_blocks(make_request(range(9), cache_salt="tenant-y"))[1] == 0
    assert kv.get_computed_blocks(make_request(range(9), cache_salt="tenant-x"))[1] == 8

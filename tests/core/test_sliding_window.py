"""KV-cache groups: a sliding group drops blocks behind its window, hits need only the window.

Block size 4, window 6 throughout: a query at position p sees positions p - 5 .. p, so once a
request's next query is at position q, blocks whose last position is before q - 5 are dropped.
"""

import pytest

from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, group_layers, request_capacity_blocks
from pagedllm.request import RequestStatus

WINDOW, BS = 6, 4


def manager(full_blocks=10, sliding_blocks=10):
    specs = [KVCacheGroupSpec(None, full_blocks), KVCacheGroupSpec(WINDOW, sliding_blocks)]
    return KVCacheManager(specs, BS, hash_seed=b"seed")


def ids(blocks):
    return [block.block_id for block in blocks]


def compute(kv, request, num_tokens, hits=None, num_hit=0):
    """Allocate and 'run' num_tokens tokens, then drop what the window no longer needs."""
    new_ids = kv.allocate_slots(request, num_tokens, hits, num_hit)
    request.num_computed_tokens += num_hit + num_tokens
    kv.remove_skipped_blocks(request)
    return new_ids


def test_group_layers_and_request_bounds():
    windows, layer_groups = group_layers([512, 512, None, 512, 128, None])
    assert windows == [None, 128, 512] and layer_groups == [2, 2, 0, 2, 1, 0]
    assert group_layers([None, None]) == ([None], [0, 0])
    full, sliding = KVCacheGroupSpec(None, 8), KVCacheGroupSpec(WINDOW, 8)
    assert full.max_blocks_per_request(40, BS, 8) == 10
    # 5 tokens before a chunk of at most 8, spanning at most one extra block boundary.
    assert sliding.max_blocks_per_request(40, BS, 8) == 5
    assert sliding.max_blocks_per_request(7, BS, 8) == 2
    with pytest.raises(ValueError, match="at least one block"):
        KVCacheGroupSpec(None, 0)
    # The longest request (in blocks) every group holds: a sliding pool of 8 holds any length.
    assert request_capacity_blocks([full, sliding], BS, 8, 64) == 8
    assert request_capacity_blocks([sliding], BS, 8, 64) == 16
    assert request_capacity_blocks([full, KVCacheGroupSpec(WINDOW, 3)], BS, 8, 64) == 3


def test_dropped_blocks_become_null_and_return_to_the_pool(make_request):
    kv = manager()
    a = make_request(range(10), max_tokens=20)
    sliding = kv.groups[1].block_pool
    assert compute(kv, a, 10) == ([1, 2, 3], [1, 2, 3])
    # The next query is at 10: it sees 5..10, so block 0 (tokens 0..3) is dropped in the
    # sliding group only; its hash stays in the map until the block is reused.
    assert kv.get_block_ids(a) == ([1, 2, 3], [0, 2, 3])
    assert sliding.free_block_ids() == [4, 5, 6, 7, 8, 9, 10, 1]
    assert sliding.blocks[1].block_hash == a.block_hashes[0] and sliding.blocks[1].ref_cnt == 0
    for token in (10, 11):
        a.append_output_token(token)
        assert compute(kv, a, 1) == ([], [])
    assert kv.get_block_ids(a) == ([1, 2, 3], [0, 2, 3])  # next query at 12 still sees 7
    a.append_output_token(12)
    assert compute(kv, a, 1) == ([4], [4])
    assert kv.get_block_ids(a) == ([1, 2, 3, 4], [0, 0, 3, 4])
    assert sliding.free_block_ids() == [5, 6, 7, 8, 9, 10, 1, 2]
    assert sliding.null_block.ref_cnt == 1
    kv.free(a)
    assert sliding.free_block_ids() == [5, 6, 7, 8, 9, 10, 1, 2, 4, 3]
    assert kv.groups[0].block_pool.free_block_ids() == [5, 6, 7, 8, 9, 10, 4, 3, 2, 1]
    assert kv.num_free_blocks == 20 and kv.usage == 0.0


def test_sliding_group_holds_at_most_window_blocks_plus_one(make_request):
    kv = manager(full_blocks=20, sliding_blocks=4)
    a = make_request(range(3), max_tokens=60)
    compute(kv, a, 3)
    for token in range(50):
        a.append_output_token(token)
        assert compute(kv, a, 1) is not None
        assert kv.groups[1].num_held_blocks(a.request_id) <= -(-WINDOW // BS) + 1
        assert len(kv.get_block_ids(a)[0]) == -(-a.num_computed_tokens // BS)
    # 53 tokens: the full group holds all 14 blocks; the sliding pool of 4 never ran dry.
    assert kv.groups[0].num_held_blocks(a.request_id) == 14
    assert kv.get_block_ids(a)[1][:11] == [0] * 11


def test_hit_needs_only_the_window_blocks(make_request):
    kv = manager(full_blocks=40, sliding_blocks=20)
    a = make_request(range(33))
    compute(kv, a, 33)
    assert kv.get_block_ids(a)[1] == [0, 0, 0, 0, 0, 0, 0, 8, 9]
    kv.free(a)
    b = make_request([*range(33), 99])
    hits, num_hit = kv.get_computed_blocks(b)
    # 8 full blocks; the first query after the hit (position 32) sees 27..32: blocks 6 and 7.
    assert num_hit == 32
    assert ids(hits[0]) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ids(hits[1]) == [0, 0, 0, 0, 0, 0, 7, 8]
    assert compute(kv, b, 2, hits, num_hit) == ([1, 2, 3, 4, 5, 6, 7, 8, 10], [0, 0, 0, 0, 0, 0, 7, 8, 10])
    # Having computed 34 tokens, b's next query (34) sees 29..34: block 6 is dropped again.
    assert kv.get_block_ids(b)[1] == [0, 0, 0, 0, 0, 0, 0, 8, 10]
    sliding = kv.groups[1].block_pool
    assert [sliding.blocks[i].ref_cnt for i in (6, 7, 8, 10)] == [0, 0, 1, 1]
    assert sliding.null_block.ref_cnt == 1
    assert kv.prefix_cache_hits == 32


def test_hit_length_is_one_every_group_can_serve(make_request):
    kv = manager(full_blocks=40, sliding_blocks=20)
    a = make_request(range(33))
    compute(kv, a, 33)  # sliding drops ids 1..7 (oldest first), keeps 8, 9
    kv.free(a)
    # A short request re-takes blocks 0 and 1, so they go back to the free tail after it.
    b0 = make_request(range(9))
    hits, num_hit = kv.get_computed_blocks(b0)
    assert num_hit == 8 and ids(hits[1]) == [1, 2]
    kv.allocate_slots(b0, 1, hits, num_hit)
    kv.free(b0)
    sliding = kv.groups[1].block_pool
    assert sliding.free_block_ids() == [*range(11, 21), 3, 4, 5, 6, 7, 9, 8, 10, 2, 1]
    kv.allocate_slots(make_request(range(100, 160)), 60)  # 15 blocks: evicts sliding 3..7
    b = make_request([*range(33), 99])
    hits, num_hit = kv.get_computed_blocks(b)
    # The full group could serve 32 tokens, but the sliding group lost the windows of every
    # length between 12 and 32 tokens: the longest length both serve is 8 tokens.
    assert num_hit == 8
    assert (ids(hits[0]), ids(hits[1])) == ([1, 2], [1, 2])


def test_no_hit_when_the_window_is_gone(make_request):
    kv = manager(full_blocks=40, sliding_blocks=12)
    a = make_request(range(17))
    compute(kv, a, 17)
    kv.free(a)
    kv.allocate_slots(make_request(range(100, 148)), 48)  # takes all 12 sliding blocks
    hits, num_hit = kv.get_computed_blocks(make_request([*range(17), 5]))
    assert num_hit == 0 and hits == ([], [])


def test_allocation_fails_when_any_group_is_short(make_request):
    kv = manager(full_blocks=10, sliding_blocks=2)
    a = make_request(range(12))
    assert kv.allocate_slots(a, 12) is None  # the sliding group would need 3 blocks
    assert [g.block_pool.num_free_blocks for g in kv.groups] == [10, 2]
    assert a.request_id not in kv.groups[0].req_to_blocks
    assert compute(kv, a, 8) == ([1, 2], [1, 2])
    assert kv.allocate_slots(a, 1) is None  # position 8 sees 3..8: blocks 0, 1 and a third
    assert kv.get_block_ids(a) == ([1, 2], [1, 2])


def test_scheduler_frees_every_group_on_preempt_abort_and_finish(make_scheduler, make_request, make_runner):
    windows = (None, WINDOW)
    sched = make_scheduler(num_blocks=4, windows=windows, max_num_batched_tokens=16)
    runner = make_runner(windows=windows)
    a, b = make_request(range(7), max_tokens=5), make_request(range(100, 107), max_tokens=5)
    sched.add_request(a)
    sched.add_request(b)
    out, _ = runner.step(sched)
    assert [n.block_ids for n in out.scheduled_new_reqs] == [([1, 2], [1, 2]), ([3, 4], [3, 4])]
    # After the prefill the next queries sit at 7: they see 2..7, nothing is dropped yet.
    runner.step(sched)  # the 8th token of each: next queries at 8 see 3..8, still in block 0
    out, _ = runner.step(sched)  # a needs a third block: b is preempted in both groups
    assert out.preempted_req_ids == {b.request_id}
    assert out.scheduled_cached_reqs[0].new_block_ids == ([4], [4])
    # a's next query (9) sees 4..9: the sliding group dropped a's block 0 as well.
    assert sched.kv_cache_manager.get_block_ids(a) == ([1, 2, 4], [0, 2, 4])
    assert [g.block_pool.num_free_blocks for g in sched.kv_cache_manager.groups] == [1, 2]
    sched.finish_requests([a.request_id], RequestStatus.FINISHED_ABORTED)
    assert [g.block_pool.num_free_blocks for g in sched.kv_cache_manager.groups] == [4, 4]
    while sched.has_unfinished_requests():
        runner.step(sched)
    assert b.output_token_ids == [1007, 1008, 1009, 1010, 1011]
    for group in sched.kv_cache_manager.groups:
        assert group.block_pool.num_free_blocks == 4 and group.req_to_blocks == {}


def test_sliding_only_cache_serves_requests_longer_than_itself(make_scheduler, make_request, make_runner):
    sched = make_scheduler(num_blocks=4, windows=(WINDOW,), max_num_batched_tokens=4)
    runner = make_runner(windows=(WINDOW,))
    long_request = make_request(range(10), max_tokens=30)  # 40 tokens = 10 blocks of 4
    sched.add_request(long_request)
    while sched.has_unfinished_requests():
        runner.step(sched)
    assert long_request.num_output_tokens == 30
    full = make_scheduler(num_blocks=4, windows=(None, WINDOW), max_num_batched_tokens=4)
    with pytest.raises(ValueError, match="need 10 KV blocks of 4 tokens, but the KV cache only has 4"):
        full.add_request(make_request(range(10), max_tokens=30))
    small = make_scheduler(num_blocks=3, windows=(WINDOW,), max_num_batched_tokens=4)
    with pytest.raises(ValueError, match=r"need 4 KV blocks .* \(sliding window 6\) only has 3"):
        small.add_request(make_request(range(10), max_tokens=30))

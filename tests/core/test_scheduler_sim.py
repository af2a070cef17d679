"""n>1 leader waits, and long randomized runs checking invariants and that no block leaks."""

import collections
import random

import pytest

from pagedllm.core.block_pool import BLOCK_CACHED, BLOCK_FREE, BLOCK_IN_USE
from pagedllm.core.snapshot import take_snapshot
from pagedllm.request import RequestStatus

EOS = 105


def test_follower_waits_for_leader_prompt_then_hits(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_num_batched_tokens=10), make_runner()
    leader, follower = make_request(range(12)), make_request(range(12))
    follower.prefix_leader = leader
    other = make_request([50, 51])
    for req in (leader, follower, other):
        sched.add_request(req)
    out, _ = runner.step(sched)
    assert out.num_scheduled_tokens == {leader.request_id: 10}
    out, _ = runner.step(sched)  # the leader finishes its prompt
    # The follower is skipped without blocking the request behind it.
    assert out.num_scheduled_tokens == {leader.request_id: 2, other.request_id: 2}
    assert list(sched.waiting) == [follower]
    out, outputs = runner.step(sched)
    (new,) = out.scheduled_new_reqs
    assert new.request_id == follower.request_id
    # Blocks 1, 2 are the leader's; 3 its partial block, 4 other's, 5 the leader's 13th token.
    assert (new.num_computed_tokens, new.block_ids) == (8, ([1, 2, 6],))
    assert out.num_scheduled_tokens[follower.request_id] == 4
    assert follower.num_cached_tokens == 8
    assert [o.num_cached_tokens for o in outputs if o.request_id == follower.request_id] == [8]


@pytest.mark.parametrize("leader_state", ["aborted", "preempted", "caching_off", "prompt_logprobs"])
def test_follower_never_waits_on_a_leader_that_cannot_help(make_scheduler, make_request, leader_state):
    sched = make_scheduler(enable_prefix_caching=leader_state != "caching_off")
    params = {"prompt_logprobs": 0} if leader_state == "prompt_logprobs" else {}
    leader, follower = make_request(range(12), **params), make_request(range(12), **params)
    follower.prefix_leader = leader
    if leader_state == "preempted":
        leader.status = RequestStatus.PREEMPTED
    else:
        sched.add_request(leader)
    sched.add_request(follower)
    if leader_state == "aborted":
        sched.finish_requests([leader.request_id], RequestStatus.FINISHED_ABORTED)
    out = sched.schedule()
    assert out.num_scheduled_tokens[follower.request_id] == 12


def next_token(request_id, tokens):
    """A sampler that depends on the tokens only, so outputs must not depend on scheduling."""
    return 100 + (sum(tokens) * 7 + len(tokens) * 3) % 23


def generate_alone(request):
    """The reference output: greedy-like decoding of one request with no batching at all."""
    tokens, output = list(request.prompt_token_ids), []
    params = request.sampling_params
    while len(output) < params.max_tokens:
        token = next_token(request.request_id, tokens)
        tokens.append(token)
        output.append(token)
        if token == request.eos_token_id and len(output) >= params.min_tokens:
            break
    return output


def random_requests(rng, make_request, count):
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(2, 10))] for _ in range(3)]
    requests = []
    while len(requests) < count:
        prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 8))]
        kwargs = {
            "max_tokens": rng.randrange(1, 12),
            "eos_token_id": EOS if rng.random() < 0.5 else None,
            "cache_salt": "s" if rng.random() < 0.1 else None,
        }
        group = [make_request(prompt, **kwargs) for _ in range(rng.choice([1, 1, 1, 3]))]
        for follower in group[1:]:
            follower.prefix_leader = group[0]
        requests += group
    return requests


def check_snapshot(sched):
    """What the web console is shown: counts and per-request blocks as the scheduler has them."""
    snapshot = take_snapshot(sched, replica=1, step=7)
    assert (snapshot.replica, snapshot.step) == (1, 7)
    assert (snapshot.num_running, snapshot.num_waiting) == (sched.num_running, sched.num_waiting)
    assert [r.request_id for r in snapshot.running] == [r.request_id for r in sched.running]
    assert [r.request_id for r in snapshot.waiting] == [r.request_id for r in sched.waiting]
    kv = sched.kv_cache_manager
    for progress, request in zip(snapshot.running, sched.running):
        held = sum(group.num_held_blocks(request.request_id) for group in kv.groups)
        assert progress.num_blocks == held
        assert progress.num_computed_tokens == request.num_computed_tokens
        assert progress.status == "running"
    for group, picture in zip(kv.groups, snapshot.kv_groups):
        pool = group.block_pool
        assert picture.num_free + picture.num_in_use + picture.num_cached == pool.num_blocks
        assert picture.num_in_use == sum(1 for b in pool.blocks[1:] if b.ref_cnt)
        assert picture.num_cached == sum(1 for b in pool.blocks[1:] if not b.ref_cnt and b.block_hash)
        assert picture.block_states.count(BLOCK_IN_USE) == picture.num_in_use


def check_invariants(sched, out, runner):
    config = sched.scheduler_config
    assert out.total_num_scheduled_tokens <= config.max_num_batched_tokens
    assert sched.num_running <= config.max_num_seqs
    kv = sched.kv_cache_manager
    running = {r.request_id for r in sched.running}
    check_snapshot(sched)
    for g, group in enumerate(kv.groups):
        refs = collections.Counter(
            b.block_id for blocks in group.req_to_blocks.values() for b in blocks if b.block_id != 0
        )
        pool = group.block_pool
        assert all(pool.blocks[i].ref_cnt == refs.get(i, 0) for i in range(1, pool.num_blocks + 1))
        assert pool.num_free_blocks == pool.num_blocks - len(refs)
        # The byte per block the snapshots copy agrees with the blocks themselves.
        truth = bytes(
            BLOCK_IN_USE if b.ref_cnt else BLOCK_FREE if b.block_hash is None else BLOCK_CACHED
            for b in pool.blocks[1:]
        )
        assert bytes(pool.states[1:]) == truth
        assert set(group.req_to_blocks) == running
        for request in sched.running:
            core_ids = kv.get_block_ids(request)[g]
            runner_ids = runner.states[request.request_id]["blocks"][g]
            # The runner is not told about dropped sliding blocks; the core nulls them.
            first = runner.first_visible(g, request.num_computed_tokens) // kv.block_size
            assert core_ids[first:] == runner_ids[first:] and len(core_ids) == len(runner_ids)
            assert all(i == 0 for i in core_ids[:first])
            window = group.sliding_window
            if window is not None:  # the memory bound of a sliding group, after every step
                assert group.num_held_blocks(request.request_id) <= -(-window // kv.block_size) + 1


@pytest.mark.parametrize("windows", [(None,), (None, 6), (5,)], ids=["full", "full+sliding6", "sliding5"])
@pytest.mark.parametrize("enable_prefix_caching", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_random_run_to_completion_leaks_nothing(
    make_scheduler, make_request, make_runner, seed, enable_prefix_caching, windows
):
    rng = random.Random(seed)
    sched = make_scheduler(
        num_blocks=12,
        max_num_seqs=4,
        max_num_batched_tokens=10,
        max_model_len=40,
        enable_prefix_caching=enable_prefix_caching,
        windows=None if windows == (None,) else windows,
    )
    runner = make_runner(next_token=next_token, windows=windows)
    all_requests = random_requests(rng, make_request, 40)
    pending = list(all_requests)
    aborted = set()
    for _ in range(3000):
        for _ in range(rng.choice([0, 0, 1, 3])):
            if pending:
                sched.add_request(pending.pop(0))
        if sched.requests and rng.random() < 0.03:
            victim = rng.choice(list(sched.requests))
            sched.finish_requests([victim], RequestStatus.FINISHED_ABORTED)
            aborted.add(victim)
        if not pending and not sched.has_unfinished_requests():
            break
        out, _ = runner.step(sched)
        check_invariants(sched, out, runner)
    else:
        pytest.fail("requests did not finish")
    for group in sched.kv_cache_manager.groups:
        pool = group.block_pool
        assert pool.num_free_blocks == 12
        assert all(block.ref_cnt == 0 for block in pool.blocks[1:])
        assert group.req_to_blocks == {}
    assert sched.kv_cache_usage == 0.0
    if windows == (None,):  # (sliding windows need fewer blocks and may never run out)
        assert sched.num_preemptions > 0
    if enable_prefix_caching:
        assert sched.make_stats().prefix_cache_hits > 0
    for request in all_requests:
        if request.request_id in aborted:
            assert request.status == RequestStatus.FINISHED_ABORTED
        else:
            assert request.is_finished and request.output_token_ids == generate_alone(request)

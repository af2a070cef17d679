"""Scheduler decisions on tiny configs: block ids, chunking, seats, preemption, aborts, rejection."""

import pytest

from pagedllm.request import RequestStatus


def test_single_request_grows_its_block_table(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(), make_runner()
    req = make_request(range(6), max_tokens=4)
    sched.add_request(req)
    out, outputs = runner.step(sched)
    (new,) = out.scheduled_new_reqs
    assert (new.block_ids, new.num_computed_tokens, new.token_ids) == (([1, 2],), 0, list(range(6)))
    assert out.num_scheduled_tokens == {req.request_id: 6} and out.total_num_scheduled_tokens == 6
    assert [(o.request_id, o.new_token_ids, o.finished) for o in outputs] == [(req.request_id, [1006], False)]
    new_block_ids = []
    for _ in range(3):
        out, outputs = runner.step(sched)
        (cached,) = out.scheduled_cached_reqs
        new_block_ids.append(cached.new_block_ids)
        assert out.num_scheduled_tokens == {req.request_id: 1}
    assert new_block_ids == [([],), ([],), ([3],)]  # the 9th token opens block 3
    assert req.output_token_ids == [1006, 1007, 1008, 1009]
    assert outputs[0].finish_reason == "length" and req.status == RequestStatus.FINISHED_LENGTH
    assert sched.kv_cache_manager.num_free_blocks == 10 and not sched.has_unfinished_requests()
    assert sched.schedule().finished_req_ids == {req.request_id}
    assert sched.schedule().finished_req_ids == set()


def test_chunked_prefill_splits_long_prompt(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_num_batched_tokens=4), make_runner()
    req = make_request(range(10), max_tokens=2)
    sched.add_request(req)
    steps = [runner.step(sched) for _ in range(3)]
    assert [out.num_scheduled_tokens[req.request_id] for out, _ in steps] == [4, 4, 2]
    assert steps[0][0].scheduled_new_reqs[0].block_ids == ([1],)
    assert [c.new_block_ids for out, _ in steps[1:] for c in out.scheduled_cached_reqs] == [([2],), ([3],)]
    assert [c.num_computed_tokens for out, _ in steps[1:] for c in out.scheduled_cached_reqs] == [4, 8]
    assert [outputs for _, outputs in steps[:2]] == [[], []]  # no token until the prompt is done
    assert steps[2][1][0].new_token_ids == [1010]


def test_budget_serves_running_first_then_chunks_waiting(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_num_batched_tokens=8), make_runner()
    a, b = make_request(range(6)), make_request(range(20, 26))
    sched.add_request(a)
    sched.add_request(b)
    out, _ = runner.step(sched)
    assert out.num_scheduled_tokens == {a.request_id: 6, b.request_id: 2}
    out, _ = runner.step(sched)
    assert out.num_scheduled_tokens == {a.request_id: 1, b.request_id: 4}
    assert [c.request_id for c in out.scheduled_cached_reqs] == [a.request_id, b.request_id]


def test_max_num_seqs_limits_running(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_num_seqs=2), make_runner()
    reqs = [make_request(range(i * 10, i * 10 + 3), max_tokens=2) for i in range(3)]
    for req in reqs:
        sched.add_request(req)
    out, _ = runner.step(sched)
    assert list(out.num_scheduled_tokens) == [reqs[0].request_id, reqs[1].request_id]
    assert (sched.num_running, sched.num_waiting) == (2, 1)
    out, outputs = runner.step(sched)  # both reach max_tokens=2
    assert all(o.finished for o in outputs) and sched.num_running == 0
    out, _ = runner.step(sched)
    assert list(out.num_scheduled_tokens) == [reqs[2].request_id]


def test_preempts_newest_running_and_resumes_with_all_tokens(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(num_blocks=4), make_runner()
    a, b = make_request(range(7), max_tokens=5), make_request(range(100, 107), max_tokens=5)
    sched.add_request(a)
    sched.add_request(b)
    out, _ = runner.step(sched)
    assert [n.block_ids for n in out.scheduled_new_reqs] == [([1, 2],), ([3, 4],)]
    runner.step(sched)  # both decode into their 8th slot: no new blocks
    out, _ = runner.step(sched)  # a needs a 3rd block: b (newest) is preempted
    assert out.preempted_req_ids == {b.request_id}
    assert out.num_scheduled_tokens == {a.request_id: 1}
    assert out.scheduled_cached_reqs[0].new_block_ids == ([4],)  # b's last block was freed first
    assert out.scheduled_new_reqs == []  # no admissions in a step that preempted
    assert (b.status, b.num_computed_tokens, b.num_preemptions) == (RequestStatus.PREEMPTED, 0, 1)
    assert list(sched.waiting) == [b] and sched.num_preemptions == 1
    for _ in range(2):  # a runs on; b cannot fit beside it
        out, outputs = runner.step(sched)
        assert b.request_id not in out.num_scheduled_tokens
    assert outputs[0].finish_reason == "length"
    out, outputs = runner.step(sched)
    (new,) = out.scheduled_new_reqs
    assert new.token_ids == [*range(100, 107), 1007, 1008]
    assert new.num_computed_tokens == 4  # its first block survived in the prefix cache
    assert new.block_ids == ([3, 4, 2],)
    assert out.num_scheduled_tokens == {b.request_id: 5}
    assert outputs[0].new_token_ids == [1009] and outputs[0].num_cached_tokens == 0  # first value kept
    while sched.has_unfinished_requests():
        runner.step(sched)
    assert b.output_token_ids == [1007, 1008, 1009, 1010, 1011]
    assert sched.kv_cache_manager.num_free_blocks == 4


def test_request_that_is_newest_preempts_itself(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(num_blocks=4), make_runner()
    a, b = make_request(range(6)), make_request(range(10, 18), max_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    runner.step(sched)  # a: blocks 1, 2 (7 tokens next); b: blocks 3, 4 (9 tokens next)
    out, _ = runner.step(sched)
    assert out.num_scheduled_tokens == {a.request_id: 1}
    assert out.preempted_req_ids == {b.request_id}
    assert sched.kv_cache_manager.get_block_ids(a) == ([1, 2],)
    assert list(sched.waiting) == [b] and sched.running == [a]


def test_preempted_requests_keep_arrival_order_in_waiting(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(num_blocks=3), make_runner()
    reqs = [make_request(range(i * 10, i * 10 + 4), max_tokens=4) for i in range(3)]
    for req in reqs:
        sched.add_request(req)
    runner.step(sched)  # one block each: the pool is full, each now needs a 2nd block
    out, _ = runner.step(sched)  # r0 preempts r2; r1 is then the newest and preempts itself
    assert out.preempted_req_ids == {reqs[1].request_id, reqs[2].request_id}
    assert list(sched.waiting) == [reqs[1], reqs[2]]
    assert sched.running == [reqs[0]] and sched.num_preemptions == 2


def test_abort_waiting_running_and_unknown(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_num_seqs=1), make_runner()
    a, b = make_request(range(5)), make_request(range(10, 15))
    sched.add_request(a)
    sched.add_request(b)
    runner.step(sched)
    assert sched.kv_cache_manager.get_block_ids(a) == ([1, 2],)
    sched.finish_requests([a.request_id, "unknown"], RequestStatus.FINISHED_ABORTED)
    assert a.status == RequestStatus.FINISHED_ABORTED and a.status.finish_reason == "abort"
    assert sched.kv_cache_manager.num_free_blocks == 10 and sched.num_running == 0
    out = sched.schedule()
    assert out.finished_req_ids == {a.request_id}
    assert list(out.num_scheduled_tokens) == [b.request_id]
    sched.finish_requests(b.request_id, RequestStatus.FINISHED_ABORTED)  # between schedule and update
    assert sched.update_from_output(out, runner.execute(out)) == []
    assert sched.kv_cache_manager.num_free_blocks == 10 and not sched.has_unfinished_requests()


def test_abort_waiting_and_preempted_requests(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(num_blocks=4), make_runner()
    a, b, c = (make_request(range(i * 10, i * 10 + 6)) for i in range(3))
    for req in (a, b, c):
        sched.add_request(req)
    sched.finish_requests([c.request_id], RequestStatus.FINISHED_ABORTED)  # still waiting
    assert sched.num_waiting == 2
    out, _ = runner.step(sched)
    assert out.finished_req_ids == {c.request_id}
    for _ in range(2):
        runner.step(sched)
    out, _ = runner.step(sched)  # the 9th token needs a block: b is preempted
    assert out.preempted_req_ids == {b.request_id}
    sched.finish_requests([b.request_id], RequestStatus.FINISHED_ABORTED)
    assert sched.num_waiting == 0 and sched.get_num_unfinished_requests() == 1
    assert sched.schedule().finished_req_ids == {b.request_id}


def test_finish_requests_needs_a_finished_status(make_scheduler):
    with pytest.raises(ValueError, match="finished status"):
        make_scheduler().finish_requests(["x"], RequestStatus.RUNNING)


def test_add_request_rejects_what_can_never_run(make_scheduler, make_request):
    sched = make_scheduler(num_blocks=2, max_model_len=16)
    with pytest.raises(
        ValueError, match=r"prompt \(10 tokens\) \+ max_tokens \(7\) = 17 exceeds max_model_len \(16\)"
    ):
        sched.add_request(make_request(range(10), max_tokens=7))
    with pytest.raises(ValueError, match="need 3 KV blocks of 4 tokens, but the KV cache only has 2 blocks"):
        sched.add_request(make_request(range(6), max_tokens=3))
    with pytest.raises(ValueError, match="empty prompt"):
        sched.add_request(make_request([]))
    sched.add_request(make_request(range(6), max_tokens=2, request_id="x"))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request(range(6), max_tokens=2, request_id="x"))
    assert sched.get_num_unfinished_requests() == 1


def test_stats(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(), make_runner()
    sched.add_request(make_request(range(9), max_tokens=1))
    runner.step(sched)
    sched.add_request(make_request([*range(8), 77], max_tokens=2))
    runner.step(sched)
    stats = sched.make_stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (18, 8)
    assert (stats.num_running, stats.num_waiting, stats.num_preemptions) == (1, 0, 0)
    assert stats.kv_cache_usage == pytest.approx(0.3) == sched.kv_cache_usage


def test_first_scheduled_time_is_set_once_and_reported(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(num_blocks=4), make_runner()
    a, b = make_request(range(7), max_tokens=5), make_request(range(100, 107), max_tokens=5)
    assert a.first_scheduled_time is None
    sched.add_request(a)
    sched.add_request(b)
    _, outputs = runner.step(sched)
    first_b = b.first_scheduled_time
    assert a.first_scheduled_time is not None and first_b is not None
    assert {o.request_id: o.first_scheduled_time for o in outputs} == {
        a.request_id: a.first_scheduled_time,
        b.request_id: first_b,
    }
    while b.num_preemptions == 0:  # b is preempted, then later readmitted
        runner.step(sched)
    while sched.has_unfinished_requests():
        runner.step(sched)
    assert b.first_scheduled_time == first_b  # the first admission counts, not the readmission

"""Stop rules applied in update_from_output, and what the scheduler reports per step."""

import pytest

from pagedllm.core.sched_output import ModelRunnerOutput, TokenLogprobs
from pagedllm.request import RequestStatus

EOS = 2


def run_script(make_scheduler, make_request, make_runner, script, max_model_len=64, **params):
    """Run one request whose sampled tokens follow `script`; returns (request, last output)."""
    sched = make_scheduler(max_model_len=max_model_len)
    runner = make_runner(next_token=lambda rid, tokens: script[len(tokens) - 4])
    request = make_request([10, 11, 12, 13], eos_token_id=EOS, **params)
    sched.add_request(request)
    outputs = []
    while sched.has_unfinished_requests():
        _, outputs = runner.step(sched)
    assert sched.kv_cache_manager.num_free_blocks == 10
    return request, outputs[-1]


@pytest.mark.parametrize(
    ("script", "params", "tokens", "status", "stop_reason"),
    [
        ([5, EOS, 7], {}, [5, EOS], RequestStatus.FINISHED_STOPPED, None),
        (
            [5, EOS, 7],
            {"ignore_eos": True, "max_tokens": 3},
            [5, EOS, 7],
            RequestStatus.FINISHED_LENGTH,
            None,
        ),
        ([5, 7, 9], {"stop_token_ids": [9, 7]}, [5, 7], RequestStatus.FINISHED_STOPPED, 7),
        ([EOS, EOS, EOS, EOS], {"min_tokens": 3}, [EOS, EOS, EOS], RequestStatus.FINISHED_STOPPED, None),
        ([7, 7, 7, 7], {"min_tokens": 2, "stop_token_ids": [7]}, [7, 7], RequestStatus.FINISHED_STOPPED, 7),
        ([5, 6, 7, 8], {"max_tokens": 3}, [5, 6, 7], RequestStatus.FINISHED_LENGTH, None),
        # On the last allowed token, EOS wins over the length limit.
        ([5, EOS], {"max_tokens": 2}, [5, EOS], RequestStatus.FINISHED_STOPPED, None),
    ],
)
def test_stop_rules(make_scheduler, make_request, make_runner, script, params, tokens, status, stop_reason):
    params.setdefault("max_tokens", 8)
    request, last = run_script(make_scheduler, make_request, make_runner, script, **params)
    assert request.output_token_ids == tokens
    assert request.status == status and request.stop_reason == stop_reason
    assert last.finish_reason == status.finish_reason and last.stop_reason == stop_reason


def test_extra_stop_ids_from_generation_config(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(), make_runner(next_token=lambda rid, tokens: 42)
    request = make_request([1, 2, 3])
    request.sampling_params._all_stop_token_ids.add(42)  # what the engine does for extra EOS ids
    sched.add_request(request)
    _, outputs = runner.step(sched)
    assert outputs[0].finish_reason == "stop" and outputs[0].stop_reason == 42


def test_max_model_len_ends_generation(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(max_model_len=8), make_runner()
    request = make_request(range(5), max_tokens=3)
    sched.add_request(request)
    request.sampling_params.max_tokens = 100  # only the context length can stop it now
    while sched.has_unfinished_requests():
        runner.step(sched)
    assert request.num_tokens == 8 and request.status == RequestStatus.FINISHED_LENGTH


def test_stop_from_outside_frees_and_reports(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(), make_runner()
    request = make_request(range(5))
    sched.add_request(request)
    runner.step(sched)
    sched.finish_requests([request.request_id], RequestStatus.FINISHED_STOPPED)  # a stop string matched
    assert request.status == RequestStatus.FINISHED_STOPPED
    assert sched.kv_cache_manager.num_free_blocks == 10
    assert sched.schedule().finished_req_ids == {request.request_id}


def test_logprobs_and_prompt_logprobs_pass_through(make_scheduler, make_request):
    sched = make_scheduler(max_num_batched_tokens=4)
    request = make_request(range(6), prompt_logprobs=1, logprobs=1)
    sched.add_request(request)
    rid = request.request_id
    chunk = TokenLogprobs(token_ids=[[1, 9]] * 3, logprobs=[[-0.5, -0.1]] * 3, ranks=[2] * 3)
    out = sched.schedule()
    outputs = sched.update_from_output(out, ModelRunnerOutput(prompt_logprobs={rid: (1, chunk)}))
    assert [(o.new_token_ids, o.new_prompt_logprobs, o.new_logprobs) for o in outputs] == [
        ([], (1, chunk), None)
    ]
    sampled = TokenLogprobs(token_ids=[[77, 3]], logprobs=[[-1.0, -0.2]], ranks=[2])
    out = sched.schedule()
    assert out.num_scheduled_tokens == {rid: 2}
    runner_out = ModelRunnerOutput(
        sampled_token_ids={rid: [77]}, logprobs={rid: sampled}, prompt_logprobs={rid: (4, chunk)}
    )
    (output,) = sched.update_from_output(out, runner_out)
    assert (output.new_token_ids, output.new_logprobs, output.new_prompt_logprobs) == (
        [77],
        sampled,
        (4, chunk),
    )
    assert output.num_cached_tokens == 0


def test_prompt_logprobs_request_gets_no_prefix_hit(make_scheduler, make_request, make_runner):
    sched, runner = make_scheduler(), make_runner()
    sched.add_request(make_request(range(9), max_tokens=1))
    runner.step(sched)
    request = make_request(range(9), max_tokens=1, prompt_logprobs=0)
    sched.add_request(request)
    out, outputs = runner.step(sched)
    assert out.scheduled_new_reqs[0].num_computed_tokens == 0 and outputs[0].num_cached_tokens == 0

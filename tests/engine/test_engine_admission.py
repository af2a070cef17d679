"""Admission control in the engine core (tiny random Llama, one seat): the queue bounds in
requests and in prompt tokens refuse new requests with EngineOverloadedError, a request left
waiting past max_queue_wait is refused the same way, and requests already started never are."""

from __future__ import annotations

import pytest

import tiny_models
from pagedllm import SamplingParams
from pagedllm.config import EngineConfig
from pagedllm.engine.input_processor import EngineOverloadedError
from pagedllm.engine.llm_engine import LLMEngine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.llama_config(), tmp_path_factory.mktemp("admission"))


def engine(folder, **bounds) -> LLMEngine:
    config = EngineConfig(model=str(folder), dtype="float32", num_kv_blocks=64, max_num_seqs=1, **bounds)
    return LLMEngine(config)


def run(engine: LLMEngine, prompts: list[list[int]], max_tokens: int = 20):
    """Add every prompt, step until done; each request's finish or error, by id."""
    results = {}
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    while engine.has_unfinished_requests():
        step = engine.receive()
        for request_id, error in step.errors:
            results[request_id] = error
        for output in step.request_outputs:
            if output.finished:
                results[output.request_id] = output.outputs[0].finish_reason
    return results


def test_a_full_queue_refuses_new_requests(folder):
    llm = engine(folder, max_num_queued_requests=2)
    try:
        results = run(llm, [[5 + i, 6, 7] for i in range(6)])
    finally:
        llm.shutdown()
    # One seat and two waiting places: the first three are served, the rest refused.
    assert [results[str(i)] for i in range(3)] == ["length"] * 3
    for i in range(3, 6):
        error = results[str(i)]
        assert isinstance(error, EngineOverloadedError) and error.param == "queue_full", error


def test_the_token_bound_counts_waiting_prompts(folder):
    llm = engine(folder, max_num_queued_tokens=40)
    try:
        # The first takes the seat; 30 + 30 tokens would wait: the second fits, the third not.
        results = run(llm, [[5] * 30, [6] * 30, [7] * 30, [8] * 5])
    finally:
        llm.shutdown()
    assert results["0"] == results["1"] == "length"
    assert isinstance(results["2"], EngineOverloadedError) and "--max-num-queued-tokens" in str(results["2"])
    assert results["3"] == "length"  # 30 + 5 tokens waiting: within the bound


def test_a_request_waiting_too_long_is_refused_but_started_ones_run_on(folder):
    # 480 steps of the one seat take far longer than the 0.05 s the others may wait.
    llm = engine(folder, max_queue_wait=0.05)
    try:
        results = run(llm, [[5, 6], [7, 8], [9, 10]], max_tokens=480)
    finally:
        llm.shutdown()
    assert results["0"] == "length"  # scheduled at once: never refused, however long it runs
    for request_id in ("1", "2"):
        error = results[request_id]
        assert isinstance(error, EngineOverloadedError) and error.param == "queue_timeout", error

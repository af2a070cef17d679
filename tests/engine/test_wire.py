"""The engine core's wire format: lossless, compact, and explicit about its version."""

from __future__ import annotations

import time

import pytest

from pagedllm.core.sched_output import EngineCoreOutput, TokenLogprobs
from pagedllm.core.scheduler import SchedulerStats
from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest
from pagedllm.engine.wire import (
    SCHEMA_VERSION,
    AddRequests,
    EngineConfigError,
    Failed,
    Outputs,
    Ready,
    WireError,
    client_codec,
    core_codec,
    expect_ready,
)
from pagedllm.sampling_params import SamplingParams


def test_requests_round_trip_with_their_sampling_params():
    params = SamplingParams(
        temperature=0.7, top_k=5, seed=3, stop=["\n\n", "END"], logit_bias={7: -2.5}, max_tokens=9, logprobs=2
    )
    request = EngineCoreRequest("r-1", [5, 6, 7], params, 123.5, cache_salt="s", prefix_leader_id="r-0")
    decoded = core_codec().decode(client_codec().encode(AddRequests([request])))
    assert decoded == AddRequests([request])
    assert decoded.requests[0].sampling_params._all_stop_token_ids == set()  # rebuilt by __post_init__


def test_outputs_round_trip_and_stay_small():
    now = time.time()
    outputs = [EngineCoreOutput(f"cmpl-{i:02d}", [1000 + i], first_scheduled_time=now) for i in range(32)]
    outputs[3] = EngineCoreOutput(
        "cmpl-03",
        [42],
        new_logprobs=TokenLogprobs([[42, 7]], [[-0.25, -1.5]], [1]),
        finish_reason="stop",
        stop_reason="END",
        num_cached_tokens=16,
        first_scheduled_time=now,
    )
    message = Outputs(EngineCoreOutputs(outputs, SchedulerStats(32, 0, 0.25, 4096, 1024, 0)))
    data = core_codec().encode(message)
    assert client_codec().decode(data) == message
    # One decode step of 32 requests: ids, one token each, a timestamp; no names, no text.
    assert len(data) < 1024, len(data)


def test_a_core_of_another_schema_is_refused_clearly():
    info = EngineCoreInfo(max_model_len=512, num_kv_blocks=64, block_size=16, device="cpu", dtype="float32")
    assert expect_ready(client_codec().decode(core_codec().encode(Ready(SCHEMA_VERSION, info)))) == info
    with pytest.raises(RuntimeError, match=f"schema {SCHEMA_VERSION + 1}, this front end {SCHEMA_VERSION}"):
        expect_ready(Ready(SCHEMA_VERSION + 1, info))
    with pytest.raises(RuntimeError, match="failed to start: out of memory"):
        expect_ready(Failed("out of memory"))
    # A refused configuration comes back as the user's error (the CLI prints it, no traceback).
    refused = client_codec().decode(
        core_codec().encode(Failed("block_size must be ...", invalid_config=True))
    )
    with pytest.raises(EngineConfigError, match="block_size must be"):
        expect_ready(refused)
    with pytest.raises(WireError, match="same pagedllm version"):
        client_codec().decode(b"\x93\x01\x02\x03")

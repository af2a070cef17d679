"""The engine-core client interface: the same front end over a core in this process and over one
in its own process (tiny random Llama, its real byte-level BPE tokenizer).

Every behaviour is checked on both clients, and the two must agree token for token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time

import pytest
import torch

from pagedllm.config import EngineConfig
from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.engine.core_client import EngineDeadError, InprocClient
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.engine.mp_client import MultiprocClient
from pagedllm.sampling_params import SamplingParams


def _config(model_dir) -> EngineConfig:
    return EngineConfig(model=str(model_dir), dtype="float32", num_kv_blocks=96, block_size=8)


@pytest.fixture(scope="module")
def engines(tiny_llama_dir):
    """One front end per client kind, both over the same weights."""
    config = _config(tiny_llama_dir)
    inproc = LLMEngine(config)
    multiproc = LLMEngine(config, MultiprocClient(config))
    yield {"inproc": inproc, "multiproc": multiproc}
    multiproc.shutdown()
    inproc.shutdown()


@pytest.fixture(params=["inproc", "multiproc"])
def engine(request, engines) -> LLMEngine:
    return engines[request.param]


def _prompt(n: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"prompt_token_ids": torch.randint(3, 512, (n,), generator=gen).tolist()}


def _greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def _run(engine: LLMEngine, prompts, params):
    return engine.run_to_completion(prompts, params if isinstance(params, list) else [params] * len(prompts))


def test_clients_agree_on_concurrent_requests(engines):
    prompts = [_prompt(5 + 7 * i, seed=i) for i in range(6)]
    params = [_greedy(6 + i) for i in range(6)]
    outs = {kind: _run(engine, prompts, params) for kind, engine in engines.items()}
    for out, p in zip(outs["inproc"], params):
        assert len(out.outputs[0].token_ids) == p.max_tokens and out.outputs[0].finish_reason == "length"
    assert [o.outputs[0].token_ids for o in outs["inproc"]] == [
        o.outputs[0].token_ids for o in outs["multiproc"]
    ]
    assert [o.outputs[0].text for o in outs["inproc"]] == [o.outputs[0].text for o in outs["multiproc"]]
    assert isinstance(engines["inproc"].client, InprocClient)


def test_abort_mid_generation_frees_the_core(engine):
    engine.add_request("long", _prompt(9), _greedy(400), output_kind="delta")
    engine.add_request("short", _prompt(11, seed=1), _greedy(30), output_kind="delta")
    seen: dict[str, int] = {"long": 0, "short": 0}
    finished = set()
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            seen[out.request_id] += len(out.outputs[0].token_ids) if out.outputs else 0
            if out.finished:
                finished.add(out.request_id)
        steps += 1
        if steps == 3:
            assert engine.abort_request("long") == 1
            assert engine.abort_request("long") == 0  # aborting twice is harmless
    assert finished == {"short"} and seen["short"] == 30
    assert seen["long"] < 10  # nothing arrived for it after the abort
    # The core has forgotten the aborted request: its next report shows nothing running.
    engine.add_request("after", _prompt(4, seed=2), _greedy(2))
    outs = {}
    while engine.has_unfinished_requests():
        outs.update((o.request_id, o) for o in engine.step())
    assert list(outs) == ["after"]
    report = _stats_after_idle(engine)
    assert report.num_running == 0 and report.num_waiting == 0 and report.kv_cache_usage == 0.0


def _stats_after_idle(engine: LLMEngine):
    """The scheduler's counters once the core has nothing to do (a tiny request's last step)."""
    engine.add_request("probe", _prompt(3, seed=3), _greedy(1))
    stats = None
    while engine.has_unfinished_requests():
        result = engine.receive()
        stats = result.stats
    return stats


def _stop_between_tokens(engine: LLMEngine, max_tokens: int = 40) -> tuple[dict, str, str]:
    """A prompt, a stop string that starts inside one of its greedy tokens and ends inside the
    next, and the text that must come out before it (found from unstopped greedy runs)."""
    tokenizer = engine.tokenizer
    for seed in range(40):
        prompt = _prompt(13, seed=seed)
        out = _run(engine, [prompt], _greedy(max_tokens))[0].outputs[0]
        ids = out.token_ids
        pieces = [tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for i in range(len(ids))]
        for i in range(1, len(pieces) - 1):
            first = pieces[i][len(pieces[i - 1]) :]
            second = pieces[i + 1][len(pieces[i]) :]
            if len(first) >= 2 and len(second) >= 2 and "\ufffd" not in first + second:
                stop = first[-2:] + second[:2]
                start = len(pieces[i]) - 2
                if out.text.find(stop) == start:  # its first occurrence, so the stop lands here
                    return prompt, stop, out.text[:start]
    raise AssertionError("no greedy output with two neighbouring multi-character tokens")


def test_stop_string_across_token_boundary(engine):
    prompt, stop, before = _stop_between_tokens(engine)
    stopped = _run(engine, [prompt], _greedy(40, stop=[stop]))[0].outputs[0]
    assert stopped.text == before
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    kept = _run(engine, [prompt], _greedy(40, stop=[stop], include_stop_str_in_output=True))[0].outputs[0]
    assert kept.text == before + stop
    # The front end aborted the sequence in the core: nothing is left running there.
    report = _stats_after_idle(engine)
    assert report.num_running == 0 and report.kv_cache_usage == 0.0


def test_streamed_stop_string_never_leaks_past_the_stop(engine):
    prompt, stop, before = _stop_between_tokens(engine)
    engine.add_request("s", prompt, _greedy(40, stop=[stop]), output_kind="delta")
    text, finish = "", None
    while engine.has_unfinished_requests():
        for out in engine.step():
            text += out.outputs[0].text
            finish = out.outputs[0].finish_reason or finish
    assert text == before and finish == "stop"


def test_n_samples_merge_into_one_output(engines):
    params = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=10, ignore_eos=True)
    outs = {kind: _run(engine, [_prompt(21, seed=6)], params)[0] for kind, engine in engines.items()}
    for out in outs.values():
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in out.outputs)
        assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert [c.token_ids for c in outs["inproc"].outputs] == [c.token_ids for c in outs["multiproc"].outputs]


def test_logprobs_cross_the_seam_intact(engines):
    params = _greedy(5, logprobs=3, prompt_logprobs=2)
    outs = {kind: _run(engine, [_prompt(9, seed=7)], params)[0] for kind, engine in engines.items()}
    a, b = outs["inproc"], outs["multiproc"]
    completion = a.outputs[0]
    assert len(completion.logprobs) == 5
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        # The chosen token first (greedy: rank 1), then the top 3 (which include it).
        assert next(iter(position)) == token_id and position[token_id].rank == 1
        assert len(position) == 3 and all(lp.decoded_token is not None for lp in position.values())
    assert a.prompt_logprobs[0] is None and all(len(p) >= 2 for p in a.prompt_logprobs[1:])
    assert completion.cumulative_logprob == pytest.approx(
        sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs))
    )
    for pa, pb in zip(completion.logprobs, b.outputs[0].logprobs):
        assert list(pa) == list(pb)
        assert [v.logprob for v in pa.values()] == pytest.approx([v.logprob for v in pb.values()], abs=1e-5)
    assert [list(p or {}) for p in a.prompt_logprobs] == [list(p or {}) for p in b.prompt_logprobs]


def test_core_process_killed_mid_stream(tiny_llama_dir):
    """With no restarts allowed the engine stays dead (tests/entrypoints/openai/test_engine_death.py
    has the restarts)."""
    config = dataclasses.replace(_config(tiny_llama_dir), max_engine_restarts=0)
    llm = AsyncLLM(config, model_name="tiny", engine_process=True)
    pid = llm.engine.client.replicas[0].pid
    try:

        async def stream_until_killed() -> int:
            tokens = 0
            with pytest.raises(EngineDeadError, match="died"):
                async for output in llm.generate(_prompt(8), _greedy(400), "doomed"):
                    tokens += len(output.outputs[0].token_ids)
                    if tokens >= 3:
                        os.kill(pid, signal.SIGKILL)
            return tokens

        assert asyncio.run(asyncio.wait_for(stream_until_killed(), 60)) >= 3
        deadline = time.monotonic() + 10
        while llm.is_running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not llm.is_running  # what /health reports as 503

        async def after():
            async for _ in llm.generate(_prompt(8), _greedy(2), "late"):
                pass

        with pytest.raises(EngineDeadError):
            asyncio.run(asyncio.wait_for(after(), 10))
    finally:
        llm.shutdown()


def test_constrained_requests_through_either_client(engine):
    """The grammar is compiled by the core's own process too (the tokenizer loads there)."""
    choices = ["fox", "lazy dog", "Paged"]
    params = [
        SamplingParams(temperature=1.0, seed=i, max_tokens=20, structured_outputs={"choice": choices})
        for i in range(4)
    ]
    outs = _run(engine, [_prompt(7, seed=i) for i in range(4)], params)
    for out in outs:
        assert out.outputs[0].text in choices and out.outputs[0].finish_reason == "stop"

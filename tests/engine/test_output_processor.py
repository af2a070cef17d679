"""OutputProcessor on hand-built core outputs and the real SmolLM2 tokenizer."""

from __future__ import annotations

import dataclasses

import pytest

from pagedllm.core.sched_output import EngineCoreOutput, TokenLogprobs
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.sampling_params import SamplingParams

EOS = 2  # <|im_end|>


@pytest.fixture
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _start(tok, params: SamplingParams, kind="final", rid="r", prompt="Say something:") -> OutputProcessor:
    proc = OutputProcessor(tok)
    children = [rid] if params.n == 1 else [f"{rid}-{i}" for i in range(params.n)]
    proc.add_request(rid, prompt, _ids(tok, prompt), params, children, arrival_time=1.0, output_kind=kind)
    return proc


def _stream(proc, ids, rid="r", finish=None, stop_reason=None, t0=10.0):
    """One token per step; the last step carries `finish`. Returns every step's ProcessedOutputs."""
    steps = []
    for i, token in enumerate(ids):
        last = i == len(ids) - 1
        out = EngineCoreOutput(
            rid, [token], finish_reason=finish if last else None, stop_reason=stop_reason if last else None
        )
        steps.append(proc.process_outputs([out], now=t0 + i))
    return steps


def test_final_mode_emits_once_with_full_text_and_metrics(tok):
    proc = _start(tok, SamplingParams(max_tokens=50))
    ids = _ids(tok, " Hello there, 世界 🎉!")
    steps = _stream(proc, ids, finish="length")
    assert all(not s.request_outputs for s in steps[:-1])
    (ro,) = steps[-1].request_outputs
    assert ro.finished and ro.request_id == "r" and ro.prompt == "Say something:"
    (c,) = ro.outputs
    assert c.text == tok.decode(ids) and c.token_ids == ids and c.finish_reason == "length"
    assert c.logprobs is None and c.cumulative_logprob is None
    assert (ro.metrics.arrival_time, ro.metrics.first_token_time, ro.metrics.finished_time) == (
        1.0,
        10.0,
        10.0 + len(ids) - 1,
    )
    assert not proc.has_unfinished_requests()


def test_stop_string_across_tokens_truncates_and_asks_core_to_stop(tok):
    proc = _start(tok, SamplingParams(stop=["swer is 4"]))
    ids = _ids(tok, " The answer is 42 and more")
    steps = _stream(proc, ids)
    hit = next(i for i, s in enumerate(steps) if s.request_outputs)
    assert steps[hit].reqs_to_abort == ["r"]
    (c,) = steps[hit].request_outputs[0].outputs
    assert c.text == " The an" and c.finish_reason == "stop" and c.stop_reason == "swer is 4"
    assert c.token_ids == ids[: hit + 1]  # every generated id stays, only the text is cut
    assert tok.decode(ids[: hit + 1]).startswith(" The answer is 4")
    assert all(not s.request_outputs and not s.reqs_to_abort for s in steps[hit + 1 :])


def test_include_stop_str_in_output(tok):
    proc = _start(tok, SamplingParams(stop=["is 42"], include_stop_str_in_output=True))
    steps = _stream(proc, _ids(tok, " The answer is 42, surely"))
    (ro,) = [r for s in steps for r in s.request_outputs]
    assert ro.outputs[0].text == " The answer is 42"


def test_stop_string_found_in_the_core_final_step(tok):
    proc = _start(tok, SamplingParams(stop=["end"]))
    steps = _stream(proc, _ids(tok, " the end"), finish="length")
    assert steps[-1].reqs_to_abort == []  # the core already finished it
    c = steps[-1].request_outputs[0].outputs[0]
    assert (c.text, c.finish_reason, c.stop_reason) == (" the ", "stop", "end")


def test_min_tokens_delays_stop_strings(tok):
    ids = _ids(tok, " stop here stop there")
    proc = _start(tok, SamplingParams(stop=["stop"], min_tokens=2))
    c = [r for s in _stream(proc, ids) for r in s.request_outputs][0].outputs[0]
    assert c.text == " stop here " and c.stop_reason == "stop"


@pytest.mark.parametrize("include", [False, True])
def test_eos_and_stop_token_text(tok, include):
    ids = _ids(tok, " Bye") + [EOS]
    params = SamplingParams(skip_special_tokens=False, include_stop_str_in_output=include)
    c = _stream(_start(tok, params), ids, finish="stop")[-1].request_outputs[0].outputs[0]
    assert c.text == (" Bye<|im_end|>" if include else " Bye") and c.token_ids == ids
    stop_id = _ids(tok, "!")[0]
    ids = _ids(tok, " Hi") + [stop_id]
    params = SamplingParams(stop_token_ids=[stop_id], include_stop_str_in_output=include)
    c = (
        _stream(_start(tok, params), ids, finish="stop", stop_reason=stop_id)[-1]
        .request_outputs[0]
        .outputs[0]
    )
    assert c.text == (" Hi!" if include else " Hi") and c.stop_reason == stop_id


def test_delta_mode_holds_back_possible_stop_prefix(tok):
    proc = _start(tok, SamplingParams(stop=["STOP"]), kind="delta")
    ids = _ids(tok, " go go ST go STOP now")
    deltas = []
    for s in _stream(proc, ids):
        for ro in s.request_outputs:
            deltas.append(ro.outputs[0].text)
            if ro.finished:
                break
    assert "".join(deltas) == " go go ST go "
    # The "ST" that turned out harmless was held, then released; nothing was ever retracted.
    sent = ""
    for d in deltas:
        sent += d
        assert " go go ST go ".startswith(sent)


def test_delta_mode_flushes_held_text_at_finish(tok):
    proc = _start(tok, SamplingParams(stop=["XYZW"]), kind="delta")
    ids = _ids(tok, " alpha beta")
    outs = [ro for s in _stream(proc, ids, finish="length") for ro in s.request_outputs]
    assert "".join(ro.outputs[0].text for ro in outs) == " alpha beta"
    assert sum(len(ro.outputs[0].token_ids) for ro in outs) == len(ids)
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"


def test_cumulative_mode_returns_growing_text(tok):
    proc = _start(tok, SamplingParams(stop=["zzz"]), kind="cumulative")
    ids = _ids(tok, " one two three")
    outs = [ro for s in _stream(proc, ids, finish="length") for ro in s.request_outputs]
    texts = [ro.outputs[0].text for ro in outs]
    assert len(outs) == len(ids) and texts[-1] == " one two three"
    assert all(texts[-1].startswith(t) and len(t) <= len(u) for t, u in zip(texts, texts[1:]))
    assert texts[-2] == tok.decode(ids[:-1])[:-2]  # two held-back characters
    assert outs[-1].outputs[0].token_ids == ids


def test_n2_final_mode_aggregates_children(tok):
    proc = _start(tok, SamplingParams(n=2, max_tokens=5))
    a, b = _ids(tok, " red"), _ids(tok, " blue sky")
    steps = [
        proc.process_outputs(
            [EngineCoreOutput("r-0", a, finish_reason="length"), EngineCoreOutput("r-1", b[:1])], now=5.0
        ),
        proc.process_outputs(
            [EngineCoreOutput("r-1", b[1:], finish_reason="stop", stop_reason=None)], now=6.0
        ),
    ]
    assert steps[0].request_outputs == []
    (ro,) = steps[1].request_outputs
    assert ro.request_id == "r" and ro.finished
    assert [(c.index, c.text, c.finish_reason) for c in ro.outputs] == [
        (0, " red", "length"),
        (1, " blue", "stop"),
    ]


def test_n2_delta_mode_lists_only_updated_children_and_aborts_children(tok):
    proc = _start(tok, SamplingParams(n=2, stop=["!"]), kind="delta")
    ro = proc.process_outputs([EngineCoreOutput("r-1", _ids(tok, " hi!"))], now=1.0)
    assert ro.reqs_to_abort == ["r-1"]
    (out,) = ro.request_outputs
    assert [(c.index, c.text, c.finish_reason) for c in out.outputs] == [(1, " hi", "stop")]
    assert not out.finished
    assert proc.abort_request("r") == ["r-0"]
    assert proc.process_outputs([EngineCoreOutput("r-0", [42])], now=2.0).request_outputs == []
    assert proc.abort_request("r") == []


def _lp(chosen, rank, tops):
    """One row: chosen token first, then (id, logprob) tops."""
    return [chosen[0]] + [t for t, _ in tops], [chosen[1]] + [v for _, v in tops], rank


def test_logprobs_are_trimmed_decoded_and_summed(tok):
    hello, world, comma = _ids(tok, "Hello")[0], _ids(tok, " world")[0], _ids(tok, ",")[0]
    rows = [
        _lp((hello, -0.5), 1, [(hello, -0.5), (world, -1.5), (comma, -2.0)]),
        _lp((world, -2.5), 4, [(comma, -0.1), (hello, -1.0), (EOS, -2.0)]),
    ]
    proc = _start(tok, SamplingParams(logprobs=1))
    new = TokenLogprobs([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    out = proc.process_outputs(
        [EngineCoreOutput("r", [hello, world], new_logprobs=new, finish_reason="length")], 1.0
    )
    c = out.request_outputs[0].outputs[0]
    assert c.cumulative_logprob == pytest.approx(-3.0)
    first, second = c.logprobs
    assert list(first) == [hello]  # chosen token is the top-1: one entry, its own rank
    assert (first[hello].logprob, first[hello].rank, first[hello].decoded_token) == (-0.5, 1, "Hello")
    assert list(second) == [world, comma]
    assert (second[world].rank, second[world].decoded_token) == (4, " world")
    assert (second[comma].logprob, second[comma].rank, second[comma].decoded_token) == (-0.1, 1, ",")


def test_prompt_logprobs_assembled_once_per_position(tok):
    prompt = "one two three four five six"
    ids = _ids(tok, prompt)
    proc = _start(tok, SamplingParams(prompt_logprobs=1), kind="delta", prompt=prompt)

    def chunk(start, end, value):
        rows = [([ids[p], 7], [value, -0.1], 3) for p in range(start, end)]
        return start, TokenLogprobs(*map(list, zip(*rows)))

    assert (
        proc.process_outputs(
            [EngineCoreOutput("r", [], new_prompt_logprobs=chunk(1, 3, -1.0))], 1.0
        ).request_outputs
        == []
    )
    # Preempted and recomputed: positions 1-2 arrive again (ignored), then the rest.
    proc.process_outputs([EngineCoreOutput("r", [], new_prompt_logprobs=chunk(1, 4, -9.0))], 2.0)
    first = proc.process_outputs(
        [EngineCoreOutput("r", [5], new_prompt_logprobs=chunk(4, len(ids), -2.0), num_cached_tokens=16)], 3.0
    ).request_outputs[0]
    plp = first.prompt_logprobs
    assert len(plp) == len(ids) and plp[0] is None
    assert [p[ids[i]].logprob for i, p in enumerate(plp) if i] == [-1.0, -1.0, -9.0] + [-2.0] * (len(ids) - 4)
    assert plp[1][7].rank == 1 and plp[1][ids[1]].rank == 3
    assert first.num_cached_tokens == 16
    later = proc.process_outputs([EngineCoreOutput("r", [6], finish_reason="length")], 4.0).request_outputs[0]
    assert later.prompt_logprobs is None  # streaming sends them once


def test_bad_output_kind_and_duplicate_ids_are_rejected(tok):
    proc = _start(tok, SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        proc.add_request("r", None, [1], SamplingParams(), ["r"], 0.0)
    with pytest.raises(ValueError, match="output_kind"):
        proc.add_request("x", None, [1], SamplingParams(), ["x"], 0.0, output_kind="stream")


def test_metrics_count_tokens_and_times_in_every_mode(tok):
    for kind in ("delta", "cumulative", "final"):
        proc = _start(tok, SamplingParams(max_tokens=3, n=2), kind=kind)
        outs = [
            EngineCoreOutput("r-0", [11], first_scheduled_time=5.0),
            EngineCoreOutput("r-1", [12], first_scheduled_time=6.0),
        ]
        proc.process_outputs(outs, now=10.0)
        proc.process_outputs([EngineCoreOutput("r-0", [13], finish_reason="length")], now=11.0)
        (ro,) = proc.process_outputs(
            [EngineCoreOutput("r-1", [14], finish_reason="length")], now=12.0
        ).request_outputs
        m = ro.metrics
        assert (m.first_scheduled_time, m.first_token_time, m.last_token_time, m.finished_time) == (
            5.0,
            10.0,
            12.0,
            12.0,
        )
        assert m.num_generation_tokens == 4, kind


def test_ids_beyond_the_tokenizer_render_as_no_text(tok):
    """A model whose vocabulary exceeds its tokenizer's (a dummy Llama 3 shape with SmolLM2's
    49,152 tokens) streams its unknown ids as empty text: ids kept, text of the known ones."""
    unknown = [len(tok), 100_000, 128_255]
    known = _ids(tok, " café 🎉 ok")
    ids = [unknown[0], *known[:2], unknown[1], *known[2:], unknown[2]]
    proc = _start(tok, SamplingParams(logprobs=1), kind="delta")
    deltas, token_ids = [], []
    for i, token in enumerate(ids):
        new = TokenLogprobs([[token, unknown[1]]], [[-1.0, -2.0]], [1])
        finish = "length" if i == len(ids) - 1 else None
        step = proc.process_outputs(
            [EngineCoreOutput("r", [token], new_logprobs=new, finish_reason=finish)], i
        )
        for output in step.request_outputs:
            deltas.append(output.outputs[0].text)
            token_ids += output.outputs[0].token_ids
            for position in output.outputs[0].logprobs:
                texts = {token_id: entry.decoded_token for token_id, entry in position.items()}
                assert texts[unknown[1]] == "" and (token in known or texts[token] == "")
    assert token_ids == ids
    assert "".join(deltas) == tok.decode(known) == " café 🎉 ok"


def test_each_output_carries_its_own_copy_of_every_metrics_field(tok):
    proc = _start(tok, SamplingParams(max_tokens=3), kind="delta")
    (first,) = proc.process_outputs(
        [EngineCoreOutput("r", [11], first_scheduled_time=5.0)], now=10.0
    ).request_outputs
    (last,) = proc.process_outputs(
        [EngineCoreOutput("r", [12], finish_reason="length")], now=11.0
    ).request_outputs
    # The copy is spelled out field by field (per-token speed): a field added later must be in it.
    live = last.metrics
    assert dataclasses.asdict(live.copy()) == dataclasses.asdict(live)
    for field in dataclasses.fields(live):
        probe = live.copy()
        setattr(probe, field.name, -1.0)
        assert getattr(probe.copy(), field.name) == -1.0, field.name
    # The first output kept the values of its own step.
    assert (first.metrics.num_generation_tokens, first.metrics.last_token_time) == (1, 10.0)
    assert (last.metrics.num_generation_tokens, last.metrics.finished_time) == (2, 11.0)

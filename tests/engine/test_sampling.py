"""Sampling parameters behave as vLLM documents them, end to end on a tiny model."""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=128, block_size=8)


def _prompt(n: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"prompt_token_ids": torch.randint(3, 512, (n,), generator=gen).tolist()}


def test_same_seed_same_tokens_alone_and_in_batch(llm):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate([_prompt(20)], seeded)[0].outputs[0].token_ids
    others = [_prompt(30, 1), _prompt(20), _prompt(11, 2)]
    batch_params = [
        SamplingParams(temperature=1.0, max_tokens=24, ignore_eos=True),
        seeded,
        SamplingParams(temperature=0.8, seed=99, max_tokens=24, ignore_eos=True),
    ]
    in_batch = llm.generate(others, batch_params)[1].outputs[0].token_ids
    assert in_batch == alone
    other_seed = llm.generate(
        [_prompt(20)], SamplingParams(temperature=1.0, seed=4321, max_tokens=24, ignore_eos=True)
    )
    assert other_seed[0].outputs[0].token_ids != alone


def test_n_returns_n_distinct_samples(llm):
    out = llm.generate([_prompt(12)], SamplingParams(n=4, temperature=1.0, max_tokens=16, ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 16 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_n_seeded_is_reproducible(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    first = [c.token_ids for c in llm.generate([_prompt(40)], params)[0].outputs]
    second = [c.token_ids for c in llm.generate([_prompt(40)], params)[0].outputs]
    assert first == second


def test_max_tokens_and_length_finish(llm):
    out = llm.generate([_prompt(10)], SamplingParams(temperature=0.0, max_tokens=7, ignore_eos=True))[
        0
    ].outputs[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"


def _greedy(llm, prompt, **kw):
    return llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, **kw))[
        0
    ].outputs[0]


def test_stop_token_ids_and_min_tokens(llm):
    prompt = _prompt(15, 3)
    base = _greedy(llm, prompt)
    stop_id = base.token_ids[4]
    first_hit = base.token_ids.index(stop_id)
    out = _greedy(llm, prompt, stop_token_ids=[stop_id])
    assert out.token_ids == base.token_ids[: first_hit + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    # min_tokens masks the stop id until enough tokens exist, so the output must be longer.
    longer = _greedy(llm, prompt, stop_token_ids=[stop_id], min_tokens=first_hit + 3)
    assert len(longer.token_ids) >= first_hit + 3
    assert stop_id not in longer.token_ids[: first_hit + 2]


def test_stop_string_across_token_boundary(llm):
    prompt = _prompt(18, 4)
    base = _greedy(llm, prompt)
    tok = llm.get_tokenizer()
    # A stop string made of the end of one token's text and the start of the next one's.
    pieces = [tok.decode([t], skip_special_tokens=True) for t in base.token_ids]
    i = next(i for i in range(3, len(pieces) - 1) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[i][-1:] + pieces[i + 1][:1]
    start = base.text.find(stop)
    assert start >= 0
    out = _greedy(llm, prompt, stop=[stop])
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == base.text[:start]
    kept = _greedy(llm, prompt, stop=[stop], include_stop_str_in_output=True)
    assert kept.text == base.text[: start + len(stop)]


def test_logprobs_and_prompt_logprobs(llm):
    prompt = _prompt(9, 5)
    out = llm.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=5, logprobs=3, prompt_logprobs=2)
    )[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == len(completion.token_ids)
    for token, position in zip(completion.token_ids, completion.logprobs):
        assert token in position and position[token].rank == 1  # greedy picks the top token
        assert 3 <= len(position) <= 4
        ranks = sorted(lp.rank for t, lp in position.items())
        assert ranks[:3] == [1, 1, 2] or ranks[:3] == [1, 2, 3]
        assert all(lp.logprob <= 0 for lp in position.values())
    assert completion.cumulative_logprob == pytest.approx(
        sum(p[t].logprob for t, p in zip(completion.token_ids, completion.logprobs))
    )
    assert len(out.prompt_logprobs) == len(prompt["prompt_token_ids"]) and out.prompt_logprobs[0] is None
    for token, position in zip(prompt["prompt_token_ids"][1:], out.prompt_logprobs[1:]):
        assert token in position and 2 <= len(position) <= 3


def test_rejects_requests_that_can_never_fit(llm):
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate([_prompt(10)], SamplingParams(max_tokens=10_000))
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([{"prompt_token_ids": [1, 2, 100_000]}])
    with pytest.raises(ValueError, match="empty"):
        llm.generate([""])
    assert not llm.engine.has_unfinished_requests()

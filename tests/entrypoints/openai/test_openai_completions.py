"""POST /v1/completions through the official openai SDK against `pagedllm serve`."""

from __future__ import annotations

import uuid

import httpx
import pytest

MODEL = "smollm2-135m-instruct"
PROMPT = "The capital of France is"


def _salt() -> dict:
    # A fresh cache salt: no prefix-cache hit, so two greedy runs compute exactly the same way.
    return {"cache_salt": uuid.uuid4().hex}


def _tokenize(server, text: str) -> list[int]:
    return httpx.post(f"{server.url}/tokenize", json={"prompt": text}).json()["tokens"]


def test_completion_shape_and_usage(client, server):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == MODEL
    assert isinstance(out.created, int)
    (choice,) = out.choices
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert choice.logprobs is None
    num_prompt = len(_tokenize(server, PROMPT))
    assert out.usage.prompt_tokens == num_prompt
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == num_prompt + 6


def test_default_max_tokens_is_16(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16 and out.choices[0].finish_reason == "length"


def test_batched_prompts_with_n_are_indexed_prompt_major(client):
    prompts = [PROMPT, "One, two, three,"]
    out = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        alone = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
        assert out.choices[2 * i].text == out.choices[2 * i + 1].text == alone.choices[0].text
    assert out.usage.completion_tokens == 16


def test_token_id_prompts_match_text_prompts(client, server):
    ids = _tokenize(server, PROMPT)
    by_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    batch = client.completions.create(model=MODEL, prompt=[ids, ids[:-1]], max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == batch.choices[0].text
    assert len(batch.choices) == 2 and batch.usage.prompt_tokens == 2 * len(ids) - 1


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> list[str]:
        out = client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0, n=2, seed=seed
        )
        return [c.text for c in out.choices]

    first = sample(1234)
    assert sample(1234) == first
    assert first[0] != first[1]  # the n samples of one seeded request differ from each other


def test_stop_string_ends_the_text(client):
    out = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"]
    )
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and " 7" not in choice.text and "6" in choice.text
    assert choice.model_extra["stop_reason"] == " 7"


def test_logprobs_in_completions_format(client):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    offsets = [0]
    for token in lp.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp.text_offset == offsets
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3  # greedy: the chosen token is one of the top 3
        assert top[token] == pytest.approx(logprob) and logprob == pytest.approx(max(top.values()))


def test_echo_with_logprobs_scores_the_prompt(client, server):
    num_prompt = len(_tokenize(server, PROMPT))
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    choice = out.choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    lp = choice.logprobs
    assert len(lp.tokens) == num_prompt + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text


def test_echo_without_generation_scores_multiple_choice(client):
    """What evaluation harnesses do: score each answer's tokens given the question."""

    def score(answer: str) -> float:
        text = PROMPT + answer
        out = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=0)
        choice = out.choices[0]
        assert choice.text == text and out.usage.completion_tokens == 0
        lp = choice.logprobs
        start = lp.text_offset.index(len(PROMPT))
        return sum(lp.token_logprobs[start:])

    assert score(" Paris") > score(" London") and score(" Paris") > score(" Berlin")


def test_streaming_equals_non_streaming_with_usage(client):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs, extra_body=_salt())
    chunks = list(
        client.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, extra_body=_salt()
        )
    )
    *content, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 12
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].text for c in content) == whole.choices[0].text
    tokens = [t for c in content if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == whole.choices[0].logprobs.tokens
    offsets = [o for c in content if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == whole.choices[0].logprobs.text_offset
    assert content[-1].choices[0].finish_reason == "length"
    assert len({c.id for c in chunks}) == 1


def test_streaming_batch_with_n_and_continuous_usage(client):
    stream = client.completions.create(
        model=MODEL,
        prompt=[PROMPT, "One, two,"],
        n=2,
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts: dict[int, str] = {}
    finished = set()
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        assert chunk.usage is not None and chunk.usage.completion_tokens >= 1
        if choice.finish_reason:
            finished.add(choice.index)
    assert finished == {0, 1, 2, 3}
    assert texts[0] == texts[1] and texts[2] == texts[3]
    assert chunks[-1].usage.completion_tokens == 12


def test_echo_streams_the_prompt_first(client):
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, echo=True, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream)
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)


def test_prefix_cache_hits_are_reported_as_cached_tokens(client):
    prompt = "Here is a long and unusual shared prefix about paged attention and KV blocks. " * 3
    salt = {"cache_salt": uuid.uuid4().hex}
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body=salt)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body=salt)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 16 == 0 and cached < second.usage.prompt_tokens


def test_vllm_extras_are_honoured(client):
    out = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="someone",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 8, "unknown": 1},
    )
    assert out.usage.completion_tokens == 8


def test_logit_bias_and_stop_token_ids_act_on_token_ids(client, server):
    (paris,) = _tokenize(server, " Paris")
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0)
    assert greedy.choices[0].text.startswith(" Paris")
    biased = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0, logit_bias={str(paris): -100}
    )
    assert not biased.choices[0].text.startswith(" Paris")
    stopped = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, extra_body={"stop_token_ids": [paris]}
    )
    choice = stopped.choices[0]
    assert choice.text == "" and choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == paris

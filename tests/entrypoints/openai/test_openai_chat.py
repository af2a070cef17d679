"""POST /v1/chat/completions through the official openai SDK against `pagedllm serve`."""

from __future__ import annotations

import uuid

import httpx

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _salt() -> dict:
    return {"cache_salt": uuid.uuid4().hex}


def test_chat_completion_shape(client):
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert out.id.startswith("chatcmpl-") and out.object == "chat.completion" and out.model == MODEL
    (choice,) = out.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and choice.logprobs is None
    assert out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_without_max_tokens_fills_the_context(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], temperature=0
    )
    assert out.choices[0].finish_reason == "stop" and out.choices[0].message.content


def test_stream_text_equals_non_stream_text_at_temperature_0(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs, extra_body=_salt())
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}, extra_body=_salt()
        )
    )
    first, *middle, last = chunks
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in middle)
    assert text == whole.choices[0].message.content
    assert middle[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in middle[:-1])
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat_logprobs(client):
    out = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = out.choices[0]
    content = choice.logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the best
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    text = "".join(e.token for e in content)
    assert text.startswith(choice.message.content)


def test_streaming_logprobs_and_n(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, n=2, temperature=0, logprobs=True, stream=True
    )
    roles, tokens, finished = set(), {0: 0, 1: 0}, set()
    for chunk in stream:
        (choice,) = chunk.choices
        if choice.delta.role:
            roles.add(choice.index)
        if choice.logprobs:
            tokens[choice.index] += len(choice.logprobs.content)
        if choice.finish_reason:
            finished.add(choice.index)
    assert roles == finished == {0, 1}
    assert tokens[0] >= 1 and tokens[1] >= 1


def test_content_parts_equal_plain_content(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_seed_stop_and_extras(client):
    kwargs = dict(model=MODEL, messages=QUESTION, max_tokens=10, temperature=1.0, seed=3)
    assert (
        client.chat.completions.create(**kwargs).choices[0].message.content
        == client.chat.completions.create(**kwargs).choices[0].message.content
    )
    stopped = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_completion_tokens=20, temperature=0, stop=["France"]
    )
    assert "France" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    extras = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
        extra_body={"top_k": 5, "min_tokens": 4, "ignore_eos": True, "chat_template_kwargs": {}},
    )
    assert extras.usage.completion_tokens == 4


def test_continue_final_message(client):
    messages = QUESTION + [{"role": "assistant", "content": "The capital of France is"}]
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=3,
        temperature=0,
        extra_body={"continue_final_message": True, "echo": True},
    )
    assert out.choices[0].message.content.startswith("The capital of France is ")
    assert "Paris" in out.choices[0].message.content


def test_models_and_tokenizer_endpoints(client, server):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    tok = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] > 0
    detok = httpx.post(f"{server.url}/detokenize", json={"tokens": tok["tokens"]}).json()
    assert detok["prompt"] == "Hello world"
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": QUESTION}).json()
    out = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
    assert chat["count"] == out.usage.prompt_tokens
    assert httpx.get(f"{server.url}/version").json()["version"]
    assert httpx.get(f"{server.url}/health").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")

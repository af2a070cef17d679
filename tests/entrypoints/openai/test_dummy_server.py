"""`pagedllm serve llama-3.2-1b --load-format dummy`: a named shape on random bf16 weights serves
completions and chat, whole and streamed, on the CPU; ids beyond its tokenizer stream as no text."""

from __future__ import annotations

import math

import pytest

from live_server import start_server

SHAPE = "llama-3.2-1b"
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def dummy_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("dummy") / "server.log"
    args = [SHAPE, "--load-format", "dummy", "--seed", "7", "--dtype", "bfloat16"]
    yield from start_server(args + ["--max-model-len", "256", "--num-kv-blocks", "16"], log)


def test_a_named_shape_serves_completions_and_chat(dummy_server):
    client = dummy_server.client()
    assert [m.id for m in client.models.list().data] == [SHAPE]
    log = dummy_server.log()
    assert "weights are random (load format dummy), seed 7" in log
    assert "the default model's (smollm2-135m-instruct) is used" in log

    whole = client.completions.create(
        model=SHAPE,
        prompt="The capital of France is",
        max_tokens=MAX_TOKENS,
        temperature=0,
        logprobs=1,
        extra_body={"ignore_eos": True},
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and whole.usage.completion_tokens == MAX_TOKENS
    assert len(choice.logprobs.tokens) == MAX_TOKENS
    assert all(math.isfinite(lp) for lp in choice.logprobs.token_logprobs)
    # Llama 3's 128,256 ids against SmolLM2's 49,152-token tokenizer: most sampled ids have no text.
    assert "" in choice.logprobs.tokens

    stream = client.chat.completions.create(
        model=SHAPE,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=MAX_TOKENS,
        temperature=0.8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] and chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert all(isinstance(c.choices[0].delta.content or "", str) for c in chunks if c.choices)

"""`pagedllm serve --device cuda` answers the official `openai` client on 127.0.0.1: a tiny
Llama in float32 gives the offline engine's greedy text, whole and streamed."""

from __future__ import annotations

import pytest

from live_server import start_server
from pagedllm import LLM, SamplingParams

pytestmark = pytest.mark.gpu

MAX_TOKENS = 12
PROMPT = "The quick brown fox"
ENGINE = ["--device", "cuda", "--dtype", "float32", "--num-kv-blocks", "64"]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """A server of the tiny Llama on the GPU, started as a user starts it; stopped afterwards."""
    log = tmp_path_factory.mktemp("gpu-server") / "server.log"
    yield from start_server([str(tiny_dirs("llama")), "--served-model-name", "tiny", *ENGINE], log)


def test_server_on_cuda_answers_the_openai_client(server, tiny_dirs):
    client = server.client()
    whole = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == MAX_TOKENS
    stream = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert streamed == whole.choices[0].text

    offline = LLM(str(tiny_dirs("llama")), device="cuda", dtype="float32", num_kv_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert offline.generate([PROMPT], params)[0].outputs[0].text == whole.choices[0].text
    assert "platform cuda" in server.log()

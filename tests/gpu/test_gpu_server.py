"""`pagedllm serve --device cuda` answers the official `openai` client on 127.0.0.1: a tiny
Llama in float32 gives the offline engine's greedy text, whole and streamed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from pagedllm import LLM, SamplingParams

pytestmark = pytest.mark.gpu

MAX_TOKENS = 12
PROMPT = "The quick brown fox"
ENGINE = ["--device", "cuda", "--dtype", "float32", "--num-kv-blocks", "64"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """(base url, log file) of a server started as a user starts it; stopped afterwards."""
    exe = shutil.which("pagedllm")
    command = [exe] if exe else [sys.executable, "-m", "pagedllm.entrypoints.cli"]
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gpu-server") / "server.log"
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the server
        args = ["serve", str(tiny_dirs("llama")), "--served-model-name", "tiny", "--port", str(port)]
        process = subprocess.Popen(command + args + ENGINE, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, log_path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not healthy in {timeout} s:\n{log_path.read_text()[-3000:]}")


def test_server_on_cuda_answers_the_openai_client(server, tiny_dirs):
    url, log_path = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
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
    assert "platform cuda" in log_path.read_text()

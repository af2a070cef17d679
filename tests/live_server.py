"""`pagedllm serve` started as a user starts it, on a free port of 127.0.0.1, and stopped.

Shared by the server tests (tests/entrypoints/openai/) and the GPU tests (tests/gpu/).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest


@dataclass
class Server:
    url: str
    log_path: Path
    process: subprocess.Popen

    def client(self, api_key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _pagedllm() -> list[str]:
    exe = shutil.which("pagedllm")
    return [exe] if exe else [sys.executable, "-m", "pagedllm.entrypoints.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(server: Server, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server did not become healthy in {timeout} s:\n{server.log()[-3000:]}")


def start_server(args: list[str], log_path: Path):
    """Yield a healthy `Server` running `pagedllm serve ARGS`; terminate it afterwards."""
    port = _free_port()
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen(
            _pagedllm() + ["serve", *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", log_path, process)
    try:
        _wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

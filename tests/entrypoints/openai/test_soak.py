"""A minute of benchmarks/soak.py's mixed traffic at concurrency 64 against a 128-block KV pool:
no unexpected errors, greedy outputs as when sent alone, no KV held once it drained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODEL
from live_server import start_server

SOAK = Path(__file__).resolve().parents[3] / "benchmarks" / "soak.py"


@pytest.fixture
def soak_server(tmp_path):
    """Its own server, so that the result does not depend on what other tests left behind."""
    args = [MODEL, "--dtype", "float32", "--num-kv-blocks", "128", "--max-num-seqs", "64"]
    yield from start_server(args, tmp_path / "server.log")


@pytest.mark.slow
def test_a_minute_of_mixed_traffic(soak_server, tmp_path):
    report_path = tmp_path / "soak.json"
    command = [sys.executable, str(SOAK), "--minutes", "1", "--concurrency", "64", "--seed", "0"]
    command += ["--greedy-samples", "12", "--base-url", soak_server.url]
    command += ["--server-pid", str(soak_server.process.pid), "--server-log", str(soak_server.log_path)]
    command += ["--output-json", str(report_path)]
    # A subprocess, as a user runs it; its own exit status is the verdict, the JSON says why.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert report_path.exists(), f"no report:\n{result.stdout}\n{result.stderr}\n{soak_server.log()[-3000:]}"
    report = json.loads(report_path.read_text())
    summary = result.stdout
    print(summary)  # the figures, with pytest -s
    assert report["unexpected_errors"] == 0, summary + json.dumps(report["error_examples"], indent=1)[:4000]
    assert report["differing_outputs"] == 0, summary + json.dumps(report["rechecks"]["differing"], indent=1)
    assert report["after_drain"]["kv_cache_usage_perc"] == 0, summary
    assert report["after_drain"]["num_requests_running"] == 0, summary
    assert report["after_drain"]["num_requests_waiting"] == 0, summary
    assert report["rechecks"]["rechecked"] > 0, summary
    assert report["cancelled"] > 0, summary
    assert result.returncode == 0, summary + result.stderr[-3000:]

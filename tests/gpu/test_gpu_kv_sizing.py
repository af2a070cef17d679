"""KV-cache sizing on CUDA from `gpu_memory_utilization`.

Llama 3.2 1B's shape on dummy weights: its cache could use far more than any GPU holds, so the
memory budget, not the useful-block cap, decides the block count. Going from 0.5 to 0.9 of the
device must add 0.4 of its memory in blocks (weights, activations and graphs are the same in
both); a share too small for the weights is refused with a message saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pagedllm import LLM

pytestmark = pytest.mark.gpu

SHAPE = "llama-3.2-1b"  # 2.5 GB of bf16 weights, 512 KiB per 16-token block
MEASURE = Path(__file__).with_name("gpu_kv_capacity.py")


def capacity(utilization: float, tokenizer) -> dict:
    done = subprocess.run(
        [sys.executable, str(MEASURE), SHAPE, str(utilization), str(tokenizer)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_more_utilization_buys_its_memory_in_blocks(tiny_dirs):
    tokenizer = tiny_dirs("llama")  # any tokenizer: the dummy shape brings none
    half, most = capacity(0.5, tokenizer), capacity(0.9, tokenizer)
    assert half["bytes_per_block"] == most["bytes_per_block"] == 16 * 2 * 16 * 8 * 64 * 2
    expected = 0.4 * most["total_memory"] / most["bytes_per_block"]
    grown = most["num_kv_blocks"] - half["num_kv_blocks"]
    assert grown == pytest.approx(expected, rel=0.03), (half, most)


def test_too_small_a_share_for_the_weights_is_refused(tiny_dirs):
    # 1% of an 80-141 GB GPU is under the 2.5 GB of weights.
    with pytest.raises(ValueError, match="do not fit"):
        LLM(
            SHAPE,
            load_format="dummy",
            tokenizer=str(tiny_dirs("llama")),
            device="cuda",
            dtype="bfloat16",
            gpu_memory_utilization=0.01,
        )

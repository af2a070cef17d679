"""The Triton attention kernels against the torch reference backend (CPU: Triton's interpreter).

Both backends attend the same step over the same cache (row order for both), written with
the same scattered block tables: decodes only, prefills only, mixed steps, cached context
(prefix hits, shared blocks), GQA 4:1, MQA, sliding windows that start inside a block, soft
caps, head sizes 64/128/256 and one that is not a power of two, and several block sizes. The
interpreter computes float32 and float16 (not bf16), so those are the dtypes here; the compile
check builds the kernels for GPU targets in bf16 too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from attention_steps import make_step, poison_cache, write_row_context

from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.attention.triton_ops.work_plan import decode_splits, plan_query_tiles, tokens_per_tile
from pagedllm.config import ConfigError

pytest.importorskip("triton")
on_gpu = torch.cuda.is_available()
DEVICE = torch.device("cuda" if on_gpu else "cpu")

STEPS = {
    "decodes": [(5, 1), (17, 1), (0, 1), (40, 1)],
    "prefills": [(0, 7), (0, 13), (0, 3)],
    "mixed with prefix hits": [(9, 1), (33, 1), (8, 12), (0, 20), (13, 5)],
    "prefix-hit context": [(64, 1), (48, 30), (31, 40)],
}
# (heads, kv heads, head size, window, soft cap): GQA 4:1, MQA, MHA, head sizes 64/128/256/80.
HEADS = [
    (8, 2, 64, None, None),
    (4, 1, 128, 9, None),
    (4, 4, 256, None, 5.0),
    (8, 2, 80, 11, 3.0),
]


def triton_backend(decode_splits=None):
    from pagedllm.attention.backends.triton_paged import TritonPagedBackend

    return TritonPagedBackend(DEVICE, decode_splits=decode_splits)


def attend(backend, requests, heads, kv_heads, head_dim, window, soft_cap, dtype, block_size, seed=0, **step):
    """One step through `backend`; `step` options go to `make_step` (shared blocks, poison)."""
    torch.manual_seed(seed)
    num_context = sum(c for c, _ in requests)
    context_k = torch.randn(num_context, kv_heads, head_dim, dtype=dtype)
    context_v = torch.randn(num_context, kv_heads, head_dim, dtype=dtype)
    num_tokens = sum(q for _, q in requests)
    # q/k/v as strided views of one fused projection, as the model passes them.
    qkv = torch.randn(num_tokens, heads + 2 * kv_heads, head_dim, dtype=dtype)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    num_blocks = sum(-(-(c + n) // block_size) for c, n in requests) + 8
    md, context_slots = make_step(backend, requests, num_blocks, seed + 1, block_size, window=window, **step)
    layout = backend.kv_cache_layout(num_blocks, block_size, kv_heads, head_dim, dtype)
    cache = torch.zeros(layout.shape, dtype=dtype)
    if num_context:
        write_row_context(cache, context_k, context_v, context_slots)
    if step.get("poison") is not None:
        poison_cache(cache, step["poison"])
    args = [t.to(DEVICE) for t in (q, k, v, cache)]
    to_device(md)
    out = backend.forward(*args[:3], args[3], layout, md, head_dim**-0.5, window, 0, soft_cap)
    return out.float().cpu(), args[3].cpu()


def to_device(md) -> None:
    md.query_start_loc, md.seq_lens = md.query_start_loc.to(DEVICE), md.seq_lens.to(DEVICE)
    md.block_tables = [t.to(DEVICE) for t in md.block_tables]
    md.slot_mappings = [t.to(DEVICE) for t in md.slot_mappings]


def tolerance(dtype):
    # The reference rounds scores and probabilities to float16; the kernels keep float32.
    return 2e-5 if dtype == torch.float32 else 4e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("block_size", [16, 4])
@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("heads,kv_heads,head_dim,window,soft_cap", HEADS)
def test_kernels_match_reference(dtype, block_size, step, heads, kv_heads, head_dim, window, soft_cap):
    requests = STEPS[step]
    shape = (requests, heads, kv_heads, head_dim, window, soft_cap, dtype, block_size)
    expected, _ = attend(TorchReferenceBackend(), *shape)
    got, _ = attend(triton_backend(), *shape)
    torch.testing.assert_close(got, expected, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("block_size", [16, 8, 32])
@pytest.mark.parametrize("window", [None, 20, 37])
def test_shared_prefix_blocks_and_poisoned_out_of_window_entries_are_never_read(block_size, window):
    """Requests share their first cached blocks (the same ids in several rows); entries before
    each request's window and past its last block name a block full of NaN. Any read of it
    would turn outputs NaN. (The reference gets clean tables: it gathers whole rows of them.)"""
    requests = [(70, 1), (45, 1), (64, 9), (90, 30), (0, 50)]
    shape = (requests, 8, 2, 64, window, None, torch.float32, block_size)
    step = dict(shared_prefix_blocks=32 // block_size, extra_columns=3)
    expected, _ = attend(TorchReferenceBackend(), *shape, **step)
    got, _ = attend(triton_backend(), *shape, poison=0, **step)
    assert torch.isfinite(got).all(), "a poisoned (out-of-window or unused) table entry was read"
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("splits", [1, 2, 3, 8])
@pytest.mark.parametrize("window,soft_cap", [(None, None), (150, None), (70, 2.0)])
def test_split_kv_decode_combines_partial_softmax(splits, window, soft_cap):
    """Few long decodes cut into ranges; short ones leave some splits empty."""
    requests = [(1099, 1), (40, 1), (300, 1), (3, 1)]
    shape = (requests, 8, 2, 64, window, soft_cap, torch.float32, 16)
    expected, _ = attend(TorchReferenceBackend(), *shape)
    got, _ = attend(triton_backend(decode_splits=splits), *shape)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_cache_write_matches_reference_and_skips_negative_slots():
    from pagedllm.attention.triton_ops.cache_write import reshape_and_cache

    torch.manual_seed(0)
    fused = torch.randn(6, 3, 2, 80)  # K and V as strided views of one tensor
    keys, values = fused[:, 0, :, :], fused[:, 1, :, :]
    slots = torch.tensor([3, 9, -1, 10, 17, 30])
    expected = torch.zeros(2, 2, 8, 4, 80)
    kept = slots >= 0
    write_row_context(expected, keys[kept], values[kept], slots[kept])
    cache = torch.zeros(2, 2, 8, 4, 80, device=DEVICE)
    reshape_and_cache(keys.to(DEVICE), values.to(DEVICE), cache, slots.to(DEVICE))
    assert torch.equal(cache.cpu(), expected)


def test_query_tiles_cover_each_prefill_token_once():
    qsl = np.array([0, 1, 2, 40, 41, 108], dtype=np.int32)  # two decodes, then 38, 1 and 67 tokens
    tiles = plan_query_tiles(qsl, 2, 5, tile_tokens=16)
    assert tiles.request.tolist() == [2, 2, 2, 3, 4, 4, 4, 4, 4]
    assert tiles.first_token.tolist() == [2, 18, 34, 40, 41, 57, 73, 89, 105]
    assert tokens_per_tile(4, 128) == 16 and tokens_per_tile(3, 128) == 16 and tokens_per_tile(1, 256) == 32


def test_decode_splits_only_when_programs_leave_the_device_idle():
    assert decode_splits(64, 8, 100_000, num_processors=132) == 1  # enough programs already
    assert decode_splits(2, 1, 100, num_processors=132) == 1  # too short to split
    assert decode_splits(1, 1, 8192, num_processors=132) == 16  # capped
    assert decode_splits(4, 2, 2048, num_processors=132) == 8  # by context length
    assert decode_splits(0, 8, 0, num_processors=132) == 1


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from pagedllm.ops.triton_launch import check_triton_usable

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="set TRITON_INTERPRET=1"):
        check_triton_usable(torch.device("cpu"), "the attention kernels")


def test_kernels_compile_for_gpu_targets():
    """Every kernel as the backend launches it, compiled for Hopper (in a process where the
    kernels are decorated for compilation, not interpretation)."""
    script = Path(__file__).with_name("compile_triton_kernels.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("cubin") >= 6


def test_head_sizes_beyond_the_kernels_are_refused_naming_the_size():
    backend = triton_backend()
    assert backend.kv_cache_layout(8, 16, 2, 96, torch.float16).shape == (2, 2, 8, 16, 96)
    with pytest.raises(ConfigError, match="this model's is 576"):
        backend.kv_cache_layout(8, 16, 2, 576, torch.float16)

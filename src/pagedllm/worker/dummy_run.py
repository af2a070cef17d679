"""Steps of made-up requests, run at start-up to measure memory and to warm kernels up.

A dummy step is built by the same `build_step_inputs` as a real one, from fresh requests of
token 0 whose blocks are 1, 2, 3, ... in every KV-cache group (a scratch table; the block pools
are not touched). Before the KV cache exists (memory profiling) the layers are bound to scratch
caches just large enough for the step, and unbound after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, cdiv
from pagedllm.platforms.gpu_memory import GpuMemoryProfile
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker import kv_cache
from pagedllm.worker.block_table import PersistentBlockTable
from pagedllm.worker.input_batch import build_step_inputs
from pagedllm.worker.request_state import RunnerRequestState


def prefill_lengths(num_tokens: int, max_model_len: int, max_num_seqs: int) -> list[int]:
    """Prompt lengths filling a step of `num_tokens`: as few requests as the context allows (no
    step can hold more than `max_num_seqs` requests of `max_model_len`)."""
    per_request = min(num_tokens, max_model_len)
    lengths = [per_request] * (num_tokens // per_request)
    if num_tokens % per_request:
        lengths.append(num_tokens % per_request)
    return lengths[:max_num_seqs]


def blocks_needed(lengths: list[int], block_size: int) -> int:
    return sum(cdiv(n, block_size) for n in lengths)


@torch.inference_mode()
def run_dummy_step(runner, lengths: list[int]) -> torch.Tensor:
    """Fresh prompts of `lengths` tokens through the model (one-token prompts form a decode
    batch), then the LM head and a float32 softmax over each request's last row, as sampling
    does. Needs the layers bound to caches of at least `blocks_needed(lengths)` + 1 blocks."""
    bs = runner.block_size
    table = PersistentBlockTable(len(lengths), cdiv(max(lengths), bs), runner.block_table.num_groups)
    states, next_block = [], 1
    for row, length in enumerate(lengths):
        ids = list(range(next_block, next_block + cdiv(length, bs)))
        next_block += len(ids)
        table.write(table.acquire_row(), [0] * table.num_groups, tuple(ids for _ in range(table.num_groups)))
        states.append(
            RunnerRequestState(
                f"dummy-{row}", [0] * length, length, SamplingParams(), None, row, [len(ids)], 0
            )
        )
    num_decodes = sum(1 for n in lengths if n == 1)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] != 1)  # decodes first
    inputs = build_step_inputs(
        [states[i] for i in order],
        [lengths[i] for i in order],
        num_decodes,
        table,
        bs,
        runner.backend,
        runner.device,
    )
    hidden = runner.forward(inputs.input_ids, inputs.positions, inputs.attn_metadata)
    last_rows = torch.from_numpy(inputs.query_start_loc[1:] - 1).to(runner.device)
    logits = runner.model.compute_logits(hidden[last_rows])
    torch.log_softmax(logits.float(), dim=-1)
    return hidden


@contextlib.contextmanager
def scratch_kv_caches(runner, num_blocks: int) -> Iterator[None]:
    """The model's layers bound to fresh caches of `num_blocks` blocks per group, for one use."""
    groups = [KVCacheGroupSpec(window, num_blocks) for window in runner.kv_windows]
    caches = kv_cache.allocate_kv_caches(
        runner.model, runner.backend, groups, runner.block_size, runner.dtype, runner.device
    )
    try:
        yield
    finally:
        for layer in kv_cache.attention_layers(runner.model):
            layer.kv_cache = None
        del caches


def profile_memory(runner, capture_graphs: bool) -> GpuMemoryProfile:
    """Weights, the activation peak of a full step (`max_num_batched_tokens` of prompts) and of
    a batch of `max_num_seqs` decodes (what graphs keep), measured through the platform."""
    platform, sched = runner.platform, runner.scheduler_config
    platform.synchronize()
    weights = platform.memory_allocated()
    prefill = prefill_lengths(sched.max_num_batched_tokens, sched.max_model_len, sched.max_num_seqs)
    decodes = [1] * min(sched.max_num_seqs, sched.max_num_batched_tokens)
    steps = [prefill, decodes] if capture_graphs else [prefill]
    peaks = []
    for lengths in steps:
        with scratch_kv_caches(runner, blocks_needed(lengths, runner.block_size) + 1):
            platform.synchronize()
            platform.reset_peak_memory()
            base = platform.memory_allocated()
            run_dummy_step(runner, lengths)
            platform.synchronize()
            peaks.append(max(0, platform.peak_memory_allocated() - base))
    platform.reset_peak_memory()
    return GpuMemoryProfile(
        total=platform.total_memory(),
        weights=weights,
        activation_peak=peaks[0],
        graph_reserve=peaks[1] if capture_graphs else 0,
        non_torch=platform.memory_outside_torch(),
    )


def warm_up(runner) -> None:
    """One prompt of up to 256 tokens and one decode, eagerly, on the real cache's free blocks:
    kernels compile (Triton) and libraries pick algorithms before the engine says it is ready."""
    sched = runner.scheduler_config
    runner.forward_eagerly = True
    try:
        run_dummy_step(runner, [min(256, sched.max_num_batched_tokens, sched.max_model_len)])
        run_dummy_step(runner, [1])
    finally:
        runner.forward_eagerly = False
    runner.platform.synchronize()

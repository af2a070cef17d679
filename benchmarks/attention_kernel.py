"""Micro-benchmark of the CPU paged-attention kernel on decode steps (one query per sequence).

Usage: python benchmarks/attention_kernel.py [--cases 128x192,32x192,1x200] [--iters 200]
                                             [--repeats 5] [--layout engine|random]

Builds bf16 caches as the CPU paged backend lays them out (`CPUPagedBackend.kv_cache_layout`:
the blocked bf16 element order; written by `reshape_and_cache`) for the SmolLM2-135M attention
shape (9 query heads, 3 KV heads, head_dim 64, 16-token blocks) and calls the kernel build's
`paged_attention` op directly (`PAGEDLLM_CPU_ISA=avx2` times the AVX2 build). Each call reads
another layer's cache, rotating over enough caches (at least --min-footprint-mb in all, more than L3) that K/V come
from DRAM as in a real decode step, where ~270 MB of weights pass between two layers'
attention. Context lengths vary by +-16 tokens around the case's mean. Prints the best mean
ms per call over the repeats and the median call (robust to other processes taking a core
for a while), each with the effective bandwidth of the K/V bytes a call must read.

--layout engine lays each sequence's first 128 tokens' blocks out contiguously (a prompt
allocated at once) and later blocks interleaved across sequences (decode growth); random
scatters every block.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import time

import numpy as np
import torch

from pagedllm.attention.backends.base import BLOCKED_BF16
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.ops import cpu_kernels


def build_tables(lens: np.ndarray, block_size: int, layout: str, rng) -> tuple[np.ndarray, int]:
    """Block tables for sequences of `lens` tokens; block 0 stays the null block."""
    counts = -(-lens // block_size)
    table = np.zeros((len(lens), int(counts.max())), dtype=np.int32)
    total = int(counts.sum())
    if layout == "random":
        ids = iter(rng.permutation(np.arange(1, total + 1)))
        for r, n in enumerate(counts):
            for j in range(n):
                table[r, j] = next(ids)
        return table, total + 1
    prompt_blocks = 128 // block_size
    next_id = 1
    for r, n in enumerate(counts):  # prompts: contiguous runs
        for j in range(min(n, prompt_blocks)):
            table[r, j] = next_id
            next_id += 1
    for j in range(prompt_blocks, int(counts.max())):  # decode growth: interleaved
        for r, n in enumerate(counts):
            if j < n:
                table[r, j] = next_id
                next_id += 1
    return table, total + 1


def huge_page_arena(nbytes: int) -> torch.Tensor:
    """nbytes of zeroed memory in 2 MiB-aligned transparent huge pages (madvise)."""
    huge = 2 << 20
    raw = torch.empty(nbytes + huge, dtype=torch.uint8)
    offset = -raw.data_ptr() % huge
    arena = raw[offset : offset + nbytes]
    libc = ctypes.CDLL(None, use_errno=True)
    length = -(-nbytes // huge) * huge
    if libc.madvise(ctypes.c_void_p(arena.data_ptr()), ctypes.c_size_t(length), 14) != 0:  # MADV_HUGEPAGE
        print("madvise(MADV_HUGEPAGE) failed, errno", ctypes.get_errno())
    arena.zero_()
    return arena


def run_case(num_seqs, mean_len, args) -> None:
    heads, kv_heads, head_dim, block_size = args.heads, args.kv_heads, args.head_dim, 16
    rng = np.random.default_rng(0)
    spread = 16 if num_seqs > 1 else 0
    lens = np.clip(rng.integers(mean_len - spread, mean_len + spread + 1, num_seqs), 1, None)
    table, num_blocks = build_tables(lens, block_size, args.layout, rng)
    kv_bytes = int(lens.sum()) * kv_heads * head_dim * 2 * 2  # K and V, bf16
    layout = CPUPagedBackend().kv_cache_layout(num_blocks, block_size, kv_heads, head_dim, torch.bfloat16)
    assert layout.element_order == BLOCKED_BF16, "the blocked bf16 KV order needs an AVX512-BF16 CPU"
    shape = layout.shape  # [2, kv_heads, num_blocks, block_size, head_dim]
    cache_bytes = math.prod(shape) * layout.dtype.itemsize
    num_layers = max(args.min_layers, -(-args.min_footprint_mb * 2**20 // cache_bytes))

    slots = torch.from_numpy(
        np.concatenate(
            [
                table[r, np.arange(n) // block_size] * block_size + np.arange(n) % block_size
                for r, n in enumerate(lens)
            ]
        )
    ).to(torch.int64)
    arena = huge_page_arena(num_layers * cache_bytes) if args.huge_pages else None
    caches = []
    for layer in range(num_layers):
        # Zeroed as the engine allocates it: slots past a sequence's end are multiplied by 0.
        if arena is None:
            cache = torch.zeros(shape, dtype=layout.dtype)
        else:
            cache = arena[layer * cache_bytes : (layer + 1) * cache_bytes].view(layout.dtype).view(shape)
        k = torch.randn(len(slots), kv_heads, head_dim, dtype=layout.dtype)
        v = torch.randn(len(slots), kv_heads, head_dim, dtype=layout.dtype)
        cpu_kernels.op("reshape_and_cache")(k, v, cache[0], cache[1], slots, True)
        caches.append((cache[0], cache[1]))

    query = torch.randn(num_seqs, heads, head_dim, dtype=torch.bfloat16)
    out = torch.empty_like(query)
    block_table = torch.from_numpy(table)
    qsl = torch.arange(num_seqs + 1, dtype=torch.int32)
    seq_lens = torch.from_numpy(lens.astype(np.int32))
    scale = head_dim**-0.5
    op = cpu_kernels.op("paged_attention")

    def call(layer):
        key_cache, value_cache = caches[layer % num_layers]
        op(out, query, key_cache, value_cache, block_table, qsl, seq_lens, scale, 0, 0.0, True)

    for i in range(num_layers):  # warm up (and touch every cache once)
        call(i)
    iters = max(args.iters, num_layers)  # each repeat goes round every cache
    best = float("inf")
    per_call = []
    for _ in range(args.repeats):
        start = last = time.perf_counter()
        for i in range(iters):
            call(i)
            now = time.perf_counter()
            per_call.append(now - last)
            last = now
        best = min(best, (last - start) / iters)
    median = float(np.median(per_call))
    print(
        f"{num_seqs:>4} seqs x ~{mean_len:<4} tokens: {best * 1e3:7.3f} ms/call (best mean) "
        f"{kv_bytes / best / 1e9:5.1f} GB/s | {median * 1e3:7.3f} ms/call (median) "
        f"{kv_bytes / median / 1e9:5.1f} GB/s  (K+V {kv_bytes / 1e6:.1f} MB/call, "
        f"{num_layers} caches, {num_layers * cache_bytes / 2**20:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default="128x192,32x192,1x200", help="SEQSxMEAN_LEN, comma-separated")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layout", choices=["engine", "random"], default="engine")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-layers", type=int, default=30)
    parser.add_argument("--min-footprint-mb", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--huge-pages", action="store_true", help="caches in transparent huge pages")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    assert cpu_kernels.available(), "CPU kernels unavailable"
    print(
        f"threads {torch.get_num_threads()}, kernels {cpu_kernels.instruction_set()}, layout {args.layout}, "
        f"huge pages {args.huge_pages}"
    )
    for case in args.cases.split(","):
        seqs, length = (int(x) for x in case.split("x"))
        run_case(seqs, length, args)


if __name__ == "__main__":
    main()

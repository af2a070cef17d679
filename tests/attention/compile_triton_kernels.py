"""Compile every Triton attention kernel, as the backend launches it, for NVIDIA GPU targets.

Needs no GPU: Triton lowers a kernel to PTX and assembles it (with the ptxas it ships) for a
named target. This catches what the interpreter cannot, such as type errors only the compiler
checks and shapes `tl.dot` refuses. Run it with the kernels decorated for compilation, i.e.
without TRITON_INTERPRET=1 (the test suite runs it in a subprocess):

    python tests/attention/compile_triton_kernels.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1: interpreted kernels cannot be compiled")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared compile helper

import triton  # noqa: E402

from pagedllm.attention.triton_ops.cache_write import reshape_and_cache_launch  # noqa: E402
from pagedllm.attention.triton_ops.decode_attention import decode_launches  # noqa: E402
from pagedllm.attention.triton_ops.query_tile_attention import query_tile_launch  # noqa: E402
from pagedllm.attention.triton_ops.work_plan import (  # noqa: E402
    keys_per_iteration,
    plan_query_tiles,
    tokens_per_tile,
)
from triton_compile import TARGETS, compile_launch  # noqa: E402

# (dtype, heads, kv heads, head size, block size, window, soft cap, decode splits)
SHAPES = [
    (torch.bfloat16, 32, 8, 128, 16, None, None, 1),  # Llama 3 8B
    (torch.bfloat16, 4, 1, 256, 16, 512, None, 4),  # Gemma 3 270M: MQA, head 256, sliding
    (torch.float16, 8, 4, 64, 32, None, 50.0, 2),  # soft cap, another block size
    (torch.float32, 6, 2, 80, 16, 64, None, 1),  # a head size that is not a power of two
]


def launches_for(shape):
    dtype, heads, kv_heads, head_dim, block_size, window, cap, splits = shape
    tokens, num_blocks, requests = 40, 64, 4
    query = torch.zeros(tokens, heads + 2 * kv_heads, head_dim, dtype=dtype)[:, :heads]
    key = torch.zeros(tokens, kv_heads, head_dim, dtype=dtype)
    cache = torch.zeros(2, kv_heads, num_blocks, block_size, head_dim, dtype=dtype)
    out = torch.zeros(tokens, heads, head_dim, dtype=dtype)
    table = torch.zeros(requests, 8, dtype=torch.int32)
    qsl_cpu = np.array([0, 1, 2, 20, 40], dtype=np.int32)
    qsl, seq_lens = torch.from_numpy(qsl_cpu), torch.tensor([30, 50, 40, 60], dtype=torch.int32)
    slots = torch.zeros(tokens, dtype=torch.int64)
    tile_tokens = tokens_per_tile(heads // kv_heads, head_dim)
    block_n = keys_per_iteration(head_dim)
    tiles = plan_query_tiles(qsl_cpu, 2, requests, tile_tokens)
    scale = head_dim**-0.5
    yield reshape_and_cache_launch(key, key, cache, slots)
    yield from decode_launches(
        out, query, cache, table, qsl, seq_lens, 2, scale, window, cap, splits, block_n
    )
    yield query_tile_launch(
        out,
        query,
        cache,
        table,
        qsl,
        seq_lens,
        torch.from_numpy(tiles.request),
        torch.from_numpy(tiles.first_token),
        tile_tokens,
        scale,
        window,
        cap,
        block_n,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first two shapes, Hopper only")
    args = parser.parse_args()
    shapes, targets = (SHAPES[:2], TARGETS[1:]) if args.quick else (SHAPES, TARGETS)
    print(f"triton {triton.__version__}")
    for shape in shapes:
        for launch in launches_for(shape):
            for target in targets:
                cubin, seconds = compile_launch(launch, target)
                name = launch.kernel.fn.__name__
                print(f"sm_{target.arch} {name} {shape[0]} h{shape[3]}: {cubin} B cubin, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

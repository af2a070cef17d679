"""Compile the Triton weight-only matmuls, as the weights launch them, for NVIDIA GPU targets.

Needs no GPU: Triton lowers a kernel to PTX and assembles it (with the ptxas it ships) for a
named target, which catches what the interpreter cannot (types only the compiler checks, dot
shapes and layouts it refuses, bf16, which the interpreter does not compute). Every launch
`int8_linear` / `int4_linear` makes for the decode and prefill tile choices (split-K and its
sum kernel included, with and without a bias) is built in bf16 and fp16. Run it with the
kernels decorated for compilation, i.e. without TRITON_INTERPRET=1 (the suite runs it in a
subprocess):

    python tests/ops/compile_triton_quant_kernels.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET=1: interpreted kernels cannot be compiled")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared compile helper

import triton  # noqa: E402

from pagedllm.ops.triton_quant_kernels import int4_launches, int8_launches  # noqa: E402
from pagedllm.ops.triton_quant_tiles import choose_tiles  # noqa: E402
from triton_compile import TARGETS, compile_launch, signature  # noqa: E402

# (rows M, features N, K, bias): decode with split-K (Llama 3 8B's o_proj on an H100: 64 column
# tiles, K in 8 splits), decode without it (a wide LM head), prefill of both tile sizes;
# K = 576 takes 2 groups per 4-bit iteration.
CASES = [
    (1, 4096, 4096, False),
    (16, 32768, 576, True),
    (100, 1536, 576, True),
    (512, 4096, 4096, False),
]
QUICK_CASES = [CASES[0], CASES[3]]


def launches_for(dtype: torch.dtype, m: int, n: int, k: int, with_bias: bool):
    """The launches of one int8 and one int4 matmul of this shape (meta tensors: nothing allocated)."""
    meta = torch.device("meta")
    x = torch.empty(m, k, dtype=dtype, device=meta)
    out = torch.empty(m, n, dtype=dtype, device=meta)
    bias = torch.empty(n, dtype=dtype, device=meta) if with_bias else None
    tiles = choose_tiles(m, n, k, 132)
    qweight = torch.empty(n, k, dtype=torch.int8, device=meta)
    yield from int8_launches(x, qweight, torch.empty(n, dtype=dtype, device=meta), bias, out, tiles)
    codes = torch.empty(n, k // 2, dtype=torch.uint8, device=meta)
    scale = torch.empty(k // 32, n, dtype=dtype, device=meta)
    yield from int4_launches(x, codes, scale, scale, bias, out, tiles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one decode and one prefill shape, Hopper only")
    args = parser.parse_args()
    cases, targets = (QUICK_CASES, TARGETS[1:]) if args.quick else (CASES, TARGETS)
    print(f"triton {triton.__version__}")
    seen = set()
    for dtype in (torch.bfloat16, torch.float16):
        for m, n, k, with_bias in cases:
            for launch in launches_for(dtype, m, n, k, with_bias):
                types, constants, attrs = signature(launch)
                key = (
                    launch.kernel.fn.__name__,
                    tuple(sorted(types.items())),
                    tuple(sorted(constants.items())),
                )
                if key in seen:  # the same specialisation from another shape
                    continue
                seen.add(key)
                for target in targets:
                    cubin, seconds = compile_launch(launch, target)
                    print(
                        f"sm_{target.arch} {launch.kernel.fn.__name__} {str(dtype)[6:]} M={m} N={n} K={k} "
                        f"{constants}: {cubin} B cubin, {seconds:.1f} s"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

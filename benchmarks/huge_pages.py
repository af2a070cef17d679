"""A decode step's bf16 matmuls with the weights on the heap's 4 KiB pages against the same
weights in the platform's huge-page arena (`pagedllm.platforms.cpu_huge_pages`), alternated in
one process.

    python benchmarks/huge_pages.py [--shapes smollm2 llama1b] [--rows 1] [--rounds 8]

Each pass runs every projection of every layer once, in the decoder's order, through the packed
bf16 matmul (`gemm_packed_bf16`, the CPU platform's default format), so that the weights stream
from memory as in a decode step (they total far more than the L3 cache). Per round: the median
GB/s of 3 passes on each copy, and their ratio; then the median ratio over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagedllm.ops import cpu_kernels
from pagedllm.platforms.cpu_huge_pages import HugePageArena

# (N, K) of qkv, o, gate_up and down, and the layer count.
SHAPES = {
    "smollm2": ([(960, 576), (576, 576), (3072, 576), (576, 1536)], 30),
    "llama1b": ([(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)], 16),
}


def rate(weights, xs, outs, shapes, nbytes: int) -> float:
    gemm = cpu_kernels.op("gemm_packed_bf16")
    start = time.perf_counter()
    for weight, out, (_, k) in zip(weights, outs, shapes):
        gemm(out, xs[k], weight)
    return nbytes / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("the compiled CPU kernels did not load here")
    pack = cpu_kernels.op("pack_weight_bf16")
    torch.manual_seed(0)
    for name in args.shapes:
        layer, layers = SHAPES[name]
        shapes = layer * layers
        heap = [pack(torch.randn(n, k, dtype=torch.bfloat16)) for n, k in shapes]
        arena = HugePageArena(sum(HugePageArena.span(w.nbytes) for w in heap))
        huge = [arena.copy_of(w) for w in heap]
        nbytes = sum(w.nbytes for w in heap)
        xs = {k: torch.randn(args.rows, k, dtype=torch.bfloat16) for _, k in shapes}
        outs = [torch.empty(args.rows, n, dtype=torch.bfloat16) for n, _ in shapes]
        rate(heap, xs, outs, shapes, nbytes), rate(huge, xs, outs, shapes, nbytes)  # warm-up
        print(
            f"{name}: {len(shapes)} matmuls, {nbytes / 1e6:.0f} MB, {args.rows} row(s), "
            f"{torch.get_num_threads()} threads"
        )
        ratios = []
        for _ in range(args.rounds):
            small = statistics.median(rate(heap, xs, outs, shapes, nbytes) for _ in range(3))
            large = statistics.median(rate(huge, xs, outs, shapes, nbytes) for _ in range(3))
            ratios.append(large / small)
            print(f"  4 KiB pages {small:5.1f} GB/s   huge pages {large:5.1f} GB/s   {large / small:.2f}x")
        print(f"  median {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})")
        del heap, huge, arena


if __name__ == "__main__":
    main()

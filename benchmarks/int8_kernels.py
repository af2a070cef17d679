"""The int8 weight matmuls alone: torch's fused int8 op (the earlier decode path) against
gemv_int8 (the compiled path now), with gemv_int4 and bf16 beside them, per byte read.

    python benchmarks/int8_kernels.py [--rows 1 4 16] [--threads 2] [--shapes smollm2 llama1b]

For each projection shape and number of rows M: µs per call and GB/s of the format's own weight
bytes (int8: codes + scales; 4-bit: codes + group scales and zeros; bf16: the weight), for

- `torch int8`: `aten._weight_int8pack_mm` on `Int8Weight` (int8 codes, bf16 per-row scales);
- `gemv_int8`:  `torch.ops.pagedllm.gemv_int8` on `GemvInt8Weight`;
- `gemv_int4`:  `torch.ops.pagedllm.gemv_int4` on `GemvInt4Weight` (the 4-bit decode path);
- `bf16`:       `pagedllm.ops.linear.skinny_linear` on the bf16 weight;
- `deq int8`:   the many-rows path of `GemvInt8Weight`: slices dequantized by
                `dequantize_int8_t` for bf16 matmuls (`--rows 64 128 256` places
                `pagedllm.ops.int8_gemv.GEMV_MAX_ROWS`, where this starts to win).

Weights are cycled through copies totalling more than the L3 cache, as in a decode step; each
figure is the median of single calls (quant_kernels.time_per_call).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import cpu_model  # noqa: E402
from quant_kernels import _copies, gemv_int4_available, time_per_call  # noqa: E402

from pagedllm.model.layers.quantization import Int8Weight  # noqa: E402
from pagedllm.model.layers.quantization.int4 import quantize_groups  # noqa: E402
from pagedllm.ops import cpu_kernels  # noqa: E402
from pagedllm.ops.dequantized_matmul import dequantized_matmul  # noqa: E402
from pagedllm.ops.int4_gemv import GemvInt4Weight  # noqa: E402
from pagedllm.ops.int8_gemv import GemvInt8Weight  # noqa: E402
from pagedllm.ops.linear import skinny_linear  # noqa: E402

SHAPES = {
    "smollm2": {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)},
    # Llama-3.2-1B: hidden 2048, 32 query and 8 KV heads of 64, intermediate 8192.
    "llama1b": {"qkv": (3072, 2048), "o_proj": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)},
}


def _run(op_name: str, weight: torch.Tensor, x: torch.Tensor, n: int) -> None:
    out = torch.empty(x.shape[0], n, dtype=x.dtype)
    cpu_kernels.op(op_name)(out, x, weight)


def _dequantized(q: GemvInt8Weight, x: torch.Tensor) -> torch.Tensor:
    return dequantized_matmul(x, q.out_features, lambda a, b: q._rows_t(a, b, x.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    if not gemv_int4_available():
        raise SystemExit("the compiled kernels are not available here (CPU kernels off, or no AVX512-BF16)")
    torch.set_num_threads(args.threads)
    cols = ["torch int8", "gemv_int8", "gemv_int4", "bf16", "deq int8"]
    print(f"{cpu_model()}; {torch.get_num_threads()} threads, bf16 x, cold weights")
    print("µs per call (GB/s of that format's weight bytes)")
    print(f"{'shape':<17}{'N x K':>12}{'M':>4}" + "".join(f"{c:>18}" for c in cols))
    gen = torch.Generator().manual_seed(0)
    for family in args.shapes:
        for name, (n, k) in SHAPES[family].items():
            weight = (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16)
            portable = Int8Weight.from_float(weight)
            gemv8 = GemvInt8Weight(portable.qweight, portable.scale)
            blocks = quantize_groups(weight.float())
            gemv4 = GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero)
            sizes = [portable.nbytes, gemv8.nbytes, gemv4.nbytes, weight.nbytes, gemv8.nbytes]
            torch8 = [Int8Weight(portable.qweight.clone(), portable.scale) for _ in range(_copies(sizes[0]))]
            ours8 = [gemv8.packed.clone() for _ in range(_copies(sizes[1]))]
            ours4 = [gemv4.packed.clone() for _ in range(_copies(sizes[2]))]
            dense = [weight.clone() for _ in range(_copies(sizes[3]))]
            modules8 = [GemvInt8Weight(portable.qweight, portable.scale) for _ in range(_copies(sizes[1]))]
            for m in args.rows:
                x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
                timings = [
                    time_per_call([lambda q=q, x=x: q.linear(x) for q in torch8]),
                    time_per_call([lambda p=p, x=x, n=n: _run("gemv_int8", p, x, n) for p in ours8]),
                    time_per_call([lambda p=p, x=x, n=n: _run("gemv_int4", p, x, n) for p in ours4]),
                    time_per_call([lambda w=w, x=x: skinny_linear(x, w) for w in dense]),
                    time_per_call([lambda q=q, x=x: _dequantized(q, x) for q in modules8]),
                ]
                cells = "".join(f"{t:>9.1f} ({b / t / 1e3:>5.1f})" for t, b in zip(timings, sizes))
                print(f"{family + ' ' + name:<17}{f'{n}x{k}':>12}{m:>4}{cells}", flush=True)


if __name__ == "__main__":
    main()

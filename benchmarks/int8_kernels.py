"""The int8 weight matmuls alone: torch's fused int8 op (the earlier decode path) against
gemv_int8 (the compiled path now), with gemv_int4 and bf16 beside them, per byte read.

    python benchmarks/int8_kernels.py [--rows 1 4 16] [--threads 2] [--shapes smollm2 llama1b]
                                      [--targets native avx2] [--rounds 3] [--best]
                                      [--cold-mb 96]

For each projection shape and number of rows M: µs per call and GB/s of the format's own weight
bytes (int8: codes + scales; 4-bit: codes + group scales and zeros; bf16: the weight), for

- `torch int8`: `aten._weight_int8pack_mm` on `Int8Weight` (int8 codes, bf16 per-row scales);
- `gemv_int8`:  `torch.ops.pagedllm.gemv_int8` on `GemvInt8Weight` (on AMX CPUs the native
                build's tile path from 9 rows);
- `gemv_int4`:  `torch.ops.pagedllm.gemv_int4` on `GemvInt4Weight` (the 4-bit decode path);
  both once per kernel build in `--targets` (`native`: -march=native, on an AVX512-BF16 CPU its
  bf16 dot products; `avx2`: the x86-64-v3 build, timed here through
  `cpu_kernels.forced_target`, what CPUs without AVX-512 run), e.g. `gemv_int4 avx2`;
- `torch bf16`: `F.linear` on the weight in bf16 (torch's own path for a dequantized weight);
- `bf16`:       `pagedllm.ops.linear.skinny_linear` on the bf16 weight;
- `packed bf16`: the bf16 weight packed (`PackedBF16Weight`, the platform's default format):
                `gemm_packed_bf16`, on AMX CPUs on the tiles (oneDNN on the weight unpacked
                from 1024 rows), elsewhere the vdpbf16ps / AVX2 register tiles;
- `onednn bf16`: the bf16 weight reordered once for oneDNN (`OneDnnBF16Weight`,
                `--onednn-weights`);
- `deq int8`:   the many-rows path of `GemvInt8Weight`: slices dequantized by
                `dequantize_int8_t` for bf16 matmuls (`--rows 64 128 256` places
                `pagedllm.ops.int8_gemv.GEMV_MAX_ROWS`, where this starts to win);
- `deq int4`:   the same for `GemvInt4Weight` (`dequantize_int4_t`).

Weights are cycled through copies totalling more than the L3 cache (`--cold-mb`; 96 MB by
default, quant_kernels.COLD_BYTES: raise it where the L3 is larger), as in a decode step; each
figure is the median over `--rounds` rounds, which take the columns in turn (so that other load
on the machine reaches them alike), of the median of single calls in a round
(quant_kernels.time_per_call).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import cpu_model  # noqa: E402
from quant_kernels import COLD_BYTES, time_per_call  # noqa: E402

from pagedllm.model.layers.quantization import Int8Weight  # noqa: E402
from pagedllm.model.layers.quantization.int4 import quantize_groups  # noqa: E402
from pagedllm.ops import cpu_kernels  # noqa: E402
from pagedllm.ops.dequantized_matmul import dequantized_matmul  # noqa: E402
from pagedllm.ops.int4_gemv import GemvInt4Weight  # noqa: E402
from pagedllm.ops.int8_gemv import GemvInt8Weight  # noqa: E402
from pagedllm.ops.linear import skinny_linear  # noqa: E402
from pagedllm.ops.onednn_linear import OneDnnBF16Weight  # noqa: E402
from pagedllm.ops.packed_linear import PackedBF16Weight  # noqa: E402

SHAPES = {
    "smollm2": {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)},
    # Llama-3.2-1B: hidden 2048, 32 query and 8 KV heads of 64, intermediate 8192.
    "llama1b": {"qkv": (3072, 2048), "o_proj": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)},
}


def _run(kernel, weight: torch.Tensor, x: torch.Tensor, n: int) -> None:
    out = torch.empty(x.shape[0], n, dtype=x.dtype)
    kernel(out, x, weight)


def _copies(nbytes: int, cold_bytes: float) -> int:
    """Copies of a weight of nbytes that together exceed cold_bytes (at least one)."""
    return max(1, round(cold_bytes / nbytes))


def _kernels(target: str) -> dict[str, object]:
    """gemv_int8 and gemv_int4 of one kernel build, looked up once."""
    with cpu_kernels.forced_target(target):
        if cpu_kernels.instruction_set() == "scalar":
            raise SystemExit(f"the {target} build of the kernels has no vector paths on this CPU")
        return {name: cpu_kernels.op(name) for name in ("gemv_int8", "gemv_int4")}


def _dequantized(q: GemvInt8Weight, x: torch.Tensor) -> torch.Tensor:
    return dequantized_matmul(x, q.out_features, lambda a, b: q._rows_t(a, b, x.dtype))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--targets", nargs="+", default=["native"], choices=list(cpu_kernels.TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cold-mb",
        type=float,
        default=COLD_BYTES / 1e6,
        help="MB of copies of each weight cycled through (more than the last-level cache)",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="the fastest single call instead of medians (for a machine shared with other work)",
    )
    args = parser.parse_args()
    if not cpu_kernels.available():
        raise SystemExit("the compiled kernels are not available here (CPU kernels off, or no compiler)")
    kernels = {target: _kernels(target) for target in args.targets}
    torch.set_num_threads(args.threads)
    cold = args.cold_mb * 1e6
    cols = ["torch int8"]
    cols += [f"gemv_int8 {t}" for t in args.targets] + [f"gemv_int4 {t}" for t in args.targets]
    cols += ["torch bf16", "bf16", "packed bf16", "onednn bf16", "deq int8", "deq int4"]
    statistic = "fastest call" if args.best else "median"
    print(
        f"{cpu_model()}; {torch.get_num_threads()} threads, bf16 x, "
        f"weights cycled through {args.cold_mb:.0f} MB of copies, {statistic}"
    )
    print(f"kernel builds: {', '.join(f'{t} ({cpu_kernels.TARGETS[t].namespace})' for t in args.targets)}")
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
            sizes = (
                [portable.nbytes] + [gemv8.nbytes] * len(args.targets) + [gemv4.nbytes] * len(args.targets)
            )
            sizes += [weight.nbytes] * 4 + [gemv8.nbytes, gemv4.nbytes]
            torch8 = [
                Int8Weight(portable.qweight.clone(), portable.scale)
                for _ in range(_copies(portable.nbytes, cold))
            ]
            ours8 = [gemv8.packed.clone() for _ in range(_copies(gemv8.nbytes, cold))]
            ours4 = [gemv4.packed.clone() for _ in range(_copies(gemv4.nbytes, cold))]
            dense = [weight.clone() for _ in range(_copies(weight.nbytes, cold))]
            modules8 = [
                GemvInt8Weight(portable.qweight, portable.scale) for _ in range(_copies(gemv8.nbytes, cold))
            ]
            onednn = [OneDnnBF16Weight(weight) for _ in range(_copies(weight.nbytes, cold))]
            packed = [PackedBF16Weight(weight) for _ in range(_copies(weight.nbytes, cold))]
            # max_rows 0: every call takes the dequantize path.
            modules4 = [
                GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero, max_rows=0)
                for _ in range(_copies(gemv4.nbytes, cold))
            ]
            for m in args.rows:
                x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
                calls = [[lambda q=q, x=x: q.linear(x) for q in torch8]]
                for op_name, copies in (("gemv_int8", ours8), ("gemv_int4", ours4)):
                    for t in args.targets:
                        kernel = kernels[t][op_name]
                        calls.append([lambda p=p, x=x, n=n, f=kernel: _run(f, p, x, n) for p in copies])
                calls.append([lambda w=w, x=x: F.linear(x, w) for w in dense])
                calls.append([lambda w=w, x=x: skinny_linear(x, w) for w in dense])
                calls.append([lambda q=q, x=x: q.linear(x) for q in packed])
                calls.append([lambda q=q, x=x: q.linear(x) for q in onednn])
                calls.append([lambda q=q, x=x: _dequantized(q, x) for q in modules8])
                calls.append([lambda q=q, x=x: q.linear(x) for q in modules4])
                rounds = [
                    [time_per_call(c, budget=0.25 / args.rounds, best=args.best) for c in calls]
                    for _ in range(args.rounds)
                ]
                timings = [(min if args.best else statistics.median)(column) for column in zip(*rounds)]
                cells = "".join(f"{t:>9.1f} ({b / t / 1e3:>5.1f})" for t, b in zip(timings, sizes))
                print(f"{family + ' ' + name:<17}{f'{n}x{k}':>12}{m:>4}{cells}", flush=True)
            # Each column holds --cold-mb of copies: free this shape's before the next is built.
            del torch8, ours8, ours4, dense, modules8, onednn, packed, modules4, calls


if __name__ == "__main__":
    main()

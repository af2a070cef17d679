"""The 4-bit weight matmuls alone on SmolLM2-135M's shapes: old (torch's int4 op) vs new (gemv_int4).

    python benchmarks/quant_kernels.py [--rows 1 4 16] [--threads 2] [--sweep] [--best]
    python benchmarks/quant_kernels.py --decode [--rounds 24]
    python benchmarks/quant_kernels.py --groups [--rows 1 4] [--calls 400]

For each projection shape and number of rows M: µs per call and the packed weight bytes
(codes + scales) read per second, for

- `torch op`:  `aten._weight_int4pack_mm_for_cpu` on torch's layout (the previous decode path);
- `gemv_int4`: `torch.ops.pagedllm.gemv_int4` on its own layout (`GemvInt4Weight`, the decode
  path now);
- `deq torch` / `deq gemv`: the prefill path, slices of the weight dequantized from each layout
  to bf16 for an ordinary matmul;
- `bf16`: the bf16 weight through `pagedllm.ops.linear.skinny_linear` (the unquantized model's
  path).

Weights are cycled through copies totalling more than the L3 cache, as in a decode step, and
each figure is the median of single calls. `--sweep` times M = 8..1024 to place the row
threshold (`pagedllm.ops.int4_gemv.GEMV_MAX_ROWS`) where the dequantize path starts to win.

`--groups`: gemv_int4 on the 1B Llama shape's projections in 4-bit groups of 32, 64 and 128,
one call of each group size in turn (so that the machine's moving read rate moves all alike),
median µs per call and GB/s of packed bytes.

`--decode`: single-stream decode steps of the default model under `--quantization int4`, in one
process, with every int4 layer switched between gemv_int4 and torch's int4 kernel every 16
steps (robust to other work on the machine, which slows both alike); prints quantiles of the
step time for each. The step compiler is off there (`LLM(step_compiler=False)`): the compiled
step reads the weights once, when it is built, so switching the layers' weights would not
reach it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagedllm.model.layers.quantization import Int4Blocks, Int4Weight
from pagedllm.model.layers.quantization.int4 import quantize_groups
from pagedllm.ops import cpu_kernels
from pagedllm.ops.dequantized_matmul import dequantized_matmul
from pagedllm.ops.int4_gemv import GROUP_SIZES, GemvInt4Weight, unpack_gemv
from pagedllm.ops.linear import skinny_linear

SHAPES = {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
COLD_BYTES = 96e6  # > 32 MB L3
SWEEP_ROWS = (8, 16, 32, 64, 128, 256, 512, 1024)
BEST = False


def time_per_call(calls, budget: float = 0.25, best: bool | None = None) -> float:
    """Time of one call (µs), cycling through `calls` (one per copy of the weights, so each call
    reads its weights from memory): the median of single calls (an occasional preemption stays
    out of it), or with `best` (default: --best) their minimum. quant_quality.py uses it too."""
    for call in calls[:2]:
        call()
    times: list[float] = []
    spent = 0.0
    while (spent < budget and len(times) < 2000) or len(times) < 5:
        start = time.perf_counter()
        calls[len(times) % len(calls)]()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    use_min = BEST if best is None else best
    return (min(times) if use_min else statistics.median(times)) * 1e6


def _copies(nbytes: float) -> int:
    return max(1, min(256, round(COLD_BYTES / nbytes)))


def gemv_int4_available() -> bool:
    """Whether gemv_int4 runs here: the CPU kernels built (and not turned off) with vector paths
    (AVX512-BF16 or AVX2)."""
    return cpu_kernels.instruction_set() != "scalar"


def _dequantize_path(q: Int4Weight | GemvInt4Weight, x: torch.Tensor) -> torch.Tensor:
    return dequantized_matmul(x, q.out_features, lambda a, b: q._rows_t(a, b, x.dtype))


def _gemv(q: GemvInt4Weight, x: torch.Tensor) -> None:
    out = torch.empty(x.shape[0], q.out_features, dtype=x.dtype)
    cpu_kernels.op("gemv_int4")(out, x, q.packed)


def _torch_op(q: Int4Weight, x: torch.Tensor) -> None:
    torch.ops.aten._weight_int4pack_mm_for_cpu(x, q.packed, q.group_size, q.scale_zero)


def _torch_layout(q: GemvInt4Weight) -> Int4Weight:
    """The same 4-bit weight in torch's int4 kernel's layout."""
    codes_t, scale_zero = unpack_gemv(
        q.packed, q.out_features, q.in_features, q.group_size
    )  # [K, N], [K / G, N, 2]
    scale_zero = scale_zero.float().transpose(0, 1)  # [N, K / G, 2]
    blocks = Int4Blocks(
        codes_t.t().contiguous(),
        scale_zero[..., 0].contiguous(),
        scale_zero[..., 1].contiguous(),
        q.group_size,
    )
    return Int4Weight(blocks, q.activation_dtype, layout="torch")


def run_decode(rounds: int, steps: int = 16) -> None:
    from pagedllm import LLM, SamplingParams

    # The compiled step binds the weights when it is built: off, so that the swaps below reach
    # every layer of every step.
    engine = LLM(quantization="int4", step_compiler=False).engine
    swaps = []
    for module in engine.engine_core.executor.runner.model.modules():
        q = getattr(module, "quant", None)
        if isinstance(q, GemvInt4Weight):
            swaps.append((module, {"gemv_int4": q, "torch op": _torch_layout(q)}))
    if not swaps:
        raise SystemExit("no int4 layer runs gemv_int4 here")
    params = SamplingParams(temperature=0, max_tokens=2 * rounds * steps + 16, ignore_eos=True)
    engine.add_request("decode", {"prompt_token_ids": list(range(100, 164))}, params)
    for _ in range(9):  # prefill and warm-up
        engine.step()
    times: dict[str, list[float]] = {"gemv_int4": [], "torch op": []}
    for r in range(2 * rounds):
        kind = list(times)[r % 2]
        for module, weights in swaps:
            module.quant = weights[kind]
        for _ in range(steps):
            start = time.perf_counter()
            engine.step()
            times[kind].append((time.perf_counter() - start) * 1e3)
    print(f"single-stream decode, {len(swaps)} int4 layers, ms per step ({torch.get_num_threads()} threads):")
    for kind, ts in times.items():
        deciles = statistics.quantiles(ts, n=10)
        print(
            f"  {kind:<10} min {min(ts):.2f}  p10 {deciles[0]:.2f}  median {statistics.median(ts):.2f}  ({len(ts)} steps)"
        )


# The 1B Llama shape's projections (Llama-3.2-1B: hidden 2048, 8 KV heads of 64, MLP 8192).
SHAPES_1B = {"qkv": (3072, 2048), "o_proj": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192)}


def run_groups(rows: list[int], calls: int) -> None:
    """gemv_int4 per group size on SHAPES_1B, the group sizes' calls alternated."""
    print(
        f"µs per call (GB/s of packed bytes), {torch.get_num_threads()} threads, cold weights, calls alternated"
    )
    print(f"{'shape':<9}{'N x K':>12}{'M':>4}" + "".join(f"{f'group {g}':>17}" for g in GROUP_SIZES))
    gen = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES_1B.items():
        weight = torch.randn(n, k, generator=gen) * 0.05
        sets = {}
        for g in GROUP_SIZES:
            blocks = quantize_groups(weight, g)
            first = GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero)
            sets[g] = [first] + [GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero)
                                 for _ in range(_copies(first.nbytes) - 1)]  # fmt: skip
        for m in rows:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            times: dict[int, list[float]] = {g: [] for g in sets}
            for i in range(calls + 20):
                for g, weights in sets.items():
                    start = time.perf_counter()
                    _gemv(weights[i % len(weights)], x)
                    if i >= 20:
                        times[g].append(time.perf_counter() - start)
            cells = ""
            for g, weights in sets.items():
                t = statistics.median(times[g]) * 1e6
                cells += f"{t:>8.1f} ({weights[0].nbytes / t / 1e3:>5.1f})"
            print(f"{name:<9}{f'{n}x{k}':>12}{m:>4}{cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help=f"rows {SWEEP_ROWS}: where dequantizing wins")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--best", action="store_true", help="the fastest call instead of the median")
    parser.add_argument("--decode", action="store_true", help="decode steps: gemv_int4 vs torch's kernel")
    parser.add_argument("--rounds", type=int, default=24, help="--decode: 16-step rounds per kernel")
    parser.add_argument("--groups", action="store_true", help="gemv_int4 per group size on the 1B shapes")
    parser.add_argument("--calls", type=int, default=400, help="--groups: calls per group size and row count")
    args = parser.parse_args()
    global BEST
    BEST = args.best
    if not gemv_int4_available():
        raise SystemExit("gemv_int4 is not available here (CPU kernels off, or no AVX512-BF16)")
    from pagedllm.platforms.cpu_threads import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    if args.decode:
        run_decode(args.rounds)
        return
    if args.groups:
        run_groups(args.rows, args.calls)
        return
    rows = SWEEP_ROWS if args.sweep else args.rows
    cols = ["torch op", "gemv_int4", "deq torch", "deq gemv", "bf16"]
    print(
        f"µs per call (GB/s of packed int4 weight bytes), {torch.get_num_threads()} threads, bf16 x, cold weights"
    )
    print(f"{'shape':<9}{'N x K':>10}{'M':>5}" + "".join(f"{c:>17}" for c in cols))
    gen = torch.Generator().manual_seed(0)
    for name in args.shapes:
        n, k = SHAPES[name]
        blocks = quantize_groups(torch.randn(n, k, generator=gen) * 0.05)
        nbytes = GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero).nbytes
        copies = _copies(nbytes)
        old = [Int4Weight(blocks, torch.bfloat16, layout="torch") for _ in range(copies)]
        new = [GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero) for _ in range(copies)]
        dense = [blocks.dequantize(torch.bfloat16) for _ in range(_copies(2 * n * k))]
        for m in rows:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            timings = [
                time_per_call([lambda q=q, x=x: _torch_op(q, x) for q in old]),
                time_per_call([lambda q=q, x=x: _gemv(q, x) for q in new]),
                time_per_call([lambda q=q, x=x: _dequantize_path(q, x) for q in old]),
                time_per_call([lambda q=q, x=x: _dequantize_path(q, x) for q in new]),
                time_per_call([lambda w=w, x=x: skinny_linear(x, w) for w in dense]),
            ]
            cells = "".join(f"{t:>8.1f} ({nbytes / t / 1e3:>5.1f})" for t in timings)
            print(f"{name:<9}{f'{n}x{k}':>10}{m:>5}{cells}", flush=True)


if __name__ == "__main__":
    main()

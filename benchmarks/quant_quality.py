"""Weight-only quantization: quality and speed of int8 / int4 against bf16 on the same model.

Usage: python benchmarks/quant_quality.py [--model smollm2-135m-instruct] [--gen-len 256]
                                          [--skip-quality] [--skip-speed] [--kernels]

Quality, on a fixed set of 8 varied chat prompts: bf16 greedily generates `--gen-len` tokens
(ignore_eos); then each model reads prompt + that continuation as one prompt (teacher forcing,
so every model scores the same tokens) and reports, per continuation position,
  * |dlogprob|: mean |logprob_q(token) - logprob_bf16(token)| over the bf16 tokens, both
    teacher-forced;
  * agree (teacher-forced): fraction of positions where the model's own argmax given the bf16
    prefix is the bf16 token (bf16 itself scores below 100% where its prefill and its decode
    steps round differently on near-ties: that is the noise floor);
  * run: mean number of tokens the model's own greedy generation (free running) matches bf16's
    before the first divergence.
A float32 row (unquantized) shows how far mere rounding differences move the same figures.
Speed: single-stream decode tokens/s through the offline API (1 request, 64 random prompt
tokens, 128 output tokens, ignore_eos): (128 - 1) / (time for 128 tokens - time for 1 token),
median of 3.
--kernels: the matmul kernels alone on the model's shapes (torch's weight-only CPU ops vs bf16
F.linear vs what the layers run), cache-cold (weights cycled through copies larger than L3).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch.nn.functional as F
from quant_kernels import time_per_call  # benchmarks/ is on sys.path when run as a script

from pagedllm import LLM, SamplingParams
from pagedllm.bench.throughput import random_prompts
from pagedllm.model.layers.quantization import SCHEMES, Int4Weight, Int8Weight, QuantScheme, quantized_nbytes
from pagedllm.model.layers.quantization.int4 import quantize_groups
from pagedllm.ops import cpu_kernels
from pagedllm.ops.int4_gemv import GemvInt4Weight

PROMPTS = [
    "The capital of France is",
    "Write a Python function that checks whether a number is prime.",
    "Explain photosynthesis to a ten-year-old.",
    "Once upon a time, in a village at the edge of a forest,",
    "List three differences between TCP and UDP.",
    "What is 17 multiplied by 23? Show your steps.",
    "Translate into French: The weather is nice today and we are going to the beach.",
    "Summarize the causes of the First World War in a few sentences.",
]
DEFINITIONS = """\
|dlogprob|: mean |logprob_q(t) - logprob_bf16(t)| over the tokens t of bf16's greedy continuation,
            both models teacher-forced on prompt + that continuation
agree (tf): fraction of continuation positions where the model's argmax, given bf16's prefix,
            is bf16's token (bf16's own figure is the prefill-vs-decode rounding floor)
run:        mean number of leading tokens of the model's own free-running greedy output that
            equal bf16's (until the first divergence)"""
# "fp32" (no quantization, float32) shows how far mere rounding moves the same figures.
METHODS = ("none", "fp32", "int8", "int4", "int4-g128")
LABEL = {"none": "bf16", "fp32": "fp32", "int8": "int8", "int4": "int4", "int4-g128": "int4-g128"}


def make_llm(args, method: str) -> LLM:
    dtype = "float32" if method == "fp32" else "bfloat16"
    quantization = None if method in ("none", "fp32") else method
    return LLM(args.model, dtype=dtype, quantization=quantization, kv_cache_memory=0.5, max_model_len=1024)


def chat_ids(llm: LLM, prompt: str) -> list[int]:
    tokenizer = llm.get_tokenizer()
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids
    return tokenizer(prompt).input_ids


def greedy(llm: LLM, prompts: list[list[int]], n: int) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def teacher_forced(llm: LLM, prompts: list[list[int]], continuations: list[list[int]]):
    """Per prompt: (logprob of each continuation token, whether it was the model's argmax)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    full = [{"prompt_token_ids": p + c} for p, c in zip(prompts, continuations)]
    outs = llm.generate(full, params, use_tqdm=False)
    result = []
    for out, prompt, cont in zip(outs, prompts, continuations):
        positions = out.prompt_logprobs[len(prompt) : len(prompt) + len(cont)]
        chosen = [lp[t] for t, lp in zip(cont, positions)]
        result.append(([c.logprob for c in chosen], [c.rank == 1 for c in chosen]))
    return result


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def decode_speed(llm: LLM, repeats: int = 3) -> float:
    prompt = random_prompts(1, 64, llm.engine.model_config.vocab_size, seed=0)

    def timed(n: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompt, params, use_tqdm=False)
        return time.perf_counter() - start

    timed(8)  # warm up
    rates = [127 / (timed(128) - timed(1)) for _ in range(repeats)]
    return statistics.median(rates)


def run_models(args) -> None:
    rows = {}
    reference = None
    for method in METHODS:
        llm = make_llm(args, method)
        model_mb = quantized_nbytes(llm.engine.engine_core.executor.runner.model) / 1e6
        row = {"MB": model_mb}
        if not args.skip_quality:
            prompts = [chat_ids(llm, p) for p in PROMPTS]
            own = greedy(llm, prompts, args.gen_len)
            if reference is None:
                reference = (prompts, own)
            tf = teacher_forced(llm, reference[0], reference[1])
            row.update(own=own, tf=tf)
        if not args.skip_speed:
            row["tok/s"] = decode_speed(llm)
        rows[method] = row
        print(f"{LABEL[method]}: done ({model_mb:.0f} MB of weights)", flush=True)
        del llm
        gc.collect()
    print_table(args, rows, reference)


def print_table(args, rows, reference) -> None:
    if not args.skip_quality:
        print(DEFINITIONS)
    header = f"{'model':<10}{'weights MB':>12}"
    if not args.skip_quality:
        header += f"{'|dlogprob|':>12}{'agree (tf)':>12}{'run (tokens)':>14}"
    if not args.skip_speed:
        header += f"{'decode tok/s':>14}"
    print(header)
    base = rows["none"]
    for method, row in rows.items():
        line = f"{LABEL[method]:<10}{row['MB']:>12.1f}"
        if not args.skip_quality:
            diffs, agree = [], []
            for (lp, top), (lp0, _) in zip(row["tf"], base["tf"]):
                diffs += [abs(a - b) for a, b in zip(lp, lp0)]
                agree += top
            runs = [first_divergence(o, r) for o, r in zip(row["own"], reference[1])]
            line += f"{statistics.mean(diffs):>12.4f}{sum(agree) / len(agree):>12.1%}"
            line += f"{statistics.mean(runs):>14.1f}"
        if not args.skip_speed:
            line += f"{row['tok/s']:>14.1f}"
        print(line)


# ---- kernels -------------------------------------------------------------------------------
SHAPES = {"qkv": (960, 576), "o_proj": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "lm_head": (49152, 576)}  # fmt: skip
COLD_BYTES = 96e6  # > 32 MB L3


def _copies(nbytes: float) -> int:
    return max(1, min(256, round(COLD_BYTES / nbytes)))


def _layer_int4(weight: torch.Tensor):
    """The 4-bit format the CPU platform gives bf16 layers: gemv_int4's where the kernels run on a
    CPU with vector paths (AVX512-BF16 or AVX2), else torch's int4 kernel's."""
    blocks = quantize_groups(weight)
    if cpu_kernels.instruction_set() != "scalar":
        return GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero)
    return Int4Weight(blocks, torch.bfloat16)


def _int4_op_args(weight: torch.Tensor, group: int):
    blocks = quantize_groups(weight, group)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(blocks.codes.to(torch.int32), 1)
    scale_zero = torch.stack([blocks.scale, blocks.zero], -1).transpose(0, 1).contiguous()
    return packed, scale_zero.to(weight.dtype)


def run_kernels(args) -> None:
    from pagedllm.platforms.cpu_threads import tune_cpu_allocator

    tune_cpu_allocator()  # as the engine does: large buffers reused, not page-faulted afresh
    torch.set_num_threads(args.threads)
    print(f"kernels: µs per call (median of single calls), {torch.get_num_threads()} threads, bf16 activations,"
          " weights cycled through copies > L3; 'layer int8/int4' = what the quantized layers run")  # fmt: skip
    cols = ["bf16", "int8 op", "int8 deq", "int4 op g32", "int4 op g64", "int4 op g128", "int4 deq",
            "layer int8", "layer int4"]  # fmt: skip
    print(f"{'shape':<9}{'N x K':>12}{'M':>6}" + "".join(f"{c:>13}" for c in cols))
    gen = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        bf16 = [
            (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16) for _ in range(_copies(2 * n * k))
        ]
        int8 = [Int8Weight.from_float(w) for w in bf16[: _copies(n * k)]]
        int4 = [_layer_int4(w) for w in bf16[: _copies(n * k / 2)]]
        ops = {
            g: [_int4_op_args(w, g) for w in bf16[: _copies(n * k / 2)]] for g in (32, 64, 128) if k % g == 0
        }
        for m in args.rows:
            x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
            timings = _row_timings(x, bf16, int8, int4, ops)
            print(f"{name:<9}{f'{n}x{k}':>12}{m:>6}" + "".join(f"{t:>13.1f}" for t in timings), flush=True)
        if 1 in args.rows:
            x = torch.randn(1, k).to(torch.bfloat16)
            rates = _bandwidths(x, bf16, int8, int4)
            print(f"{'':<9}M=1 weight bytes/s: " + ", ".join(f"{f} {r:.1f} GB/s" for f, r in rates.items()))


def _row_timings(x, bf16, int8, int4, ops) -> list[float]:
    aten = torch.ops.aten
    return [
        time_per_call([lambda w=w: F.linear(x, w) for w in bf16]),
        time_per_call([lambda q=q: aten._weight_int8pack_mm(x, q.qweight, q.scale) for q in int8]),
        time_per_call([lambda q=q: F.linear(x, q.dequantize()) for q in int8]),
        *(
            time_per_call(
                [lambda a=a, g=g: aten._weight_int4pack_mm_for_cpu(x, a[0], g, a[1]) for a in ops[g]]
            )
            if g in ops
            else float("nan")
            for g in (32, 64, 128)
        ),
        time_per_call([lambda q=q: torch.mm(x, q.dequantize_t()) for q in int4]),
        time_per_call([lambda q=q: q.linear(x) for q in int8]),
        time_per_call([lambda q=q: q.linear(x) for q in int4]),
    ]


def _bandwidths(x, bf16, int8, int4) -> dict[str, float]:
    """Weight bytes read per second by one row's matmul (bf16 F.linear, the int8 and int4 layers)."""
    return {
        "bf16": bf16[0].nbytes / time_per_call([lambda w=w: F.linear(x, w) for w in bf16]) / 1e3,
        "int8": int8[0].nbytes / time_per_call([lambda q=q: q.linear(x) for q in int8]) / 1e3,
        "int4": int4[0].nbytes / time_per_call([lambda q=q: q.linear(x) for q in int4]) / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--gen-len", type=int, default=256)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--kernels", action="store_true", help="time the matmul kernels alone and exit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--int4-lm-head", action="store_true", help="experiment: 4-bit groups for the LM head under int4 too"
    )
    parser.add_argument("--rows", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 128, 2048])
    args = parser.parse_args()
    if args.int4_lm_head:
        SCHEMES["int4"] = QuantScheme(linear="int4", lm_head="int4")
    if args.kernels:
        run_kernels(args)
    else:
        run_models(args)


if __name__ == "__main__":
    main()

"""Break engine steps into their parts to choose optimisations by measurement.

Usage: python benchmarks/profile_step.py [--model M] [--num-prompts 128] [--input-len 128]
                                          [--output-len 64] [--max-num-seqs 128]
                                          [--quantization int8|int4] [--torch-profile]
Prints the mean time per step of scheduling, input preparation, model forward (the runner's
`forward`: the compiled step where it takes the step, else the model's layers), logits,
sampling, scheduler update and output processing, separately for prefill-heavy and
decode-only steps; with --torch-profile, the top torch ops of a few decode steps.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from contextlib import contextmanager

from pagedllm import LLM, SamplingParams
from pagedllm.bench.throughput import random_prompts
from pagedllm.worker import model_runner

TIMES: dict[str, float] = defaultdict(float)


@contextmanager
def timed(name: str):
    start = time.perf_counter()
    yield
    TIMES[name] += time.perf_counter() - start


def wrap(obj, attr: str, name: str) -> None:
    original = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        with timed(name):
            return original(*args, **kwargs)

    setattr(obj, attr, wrapper)


def instrument(llm: LLM) -> None:
    engine = llm.engine
    core = engine.engine_core
    runner = core.executor.runner
    wrap(core.scheduler, "schedule", "schedule")
    wrap(core.scheduler, "update_from_output", "update_from_output")
    wrap(engine.output_processor, "process_outputs", "output_processing")
    wrap(model_runner, "build_step_inputs", "prepare_inputs")
    wrap(runner.model, "compute_logits", "compute_logits")
    wrap(runner, "forward", "model_forward")  # the compiled step or the model's forward
    wrap(runner, "sampler", "sampler")
    wrap(model_runner, "build_sampling_metadata", "sampling_metadata")


def run_phase(llm: LLM, label: str, steps: int | None, decode_only: bool) -> None:
    engine = llm.engine
    TIMES.clear()
    count = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests() and (steps is None or count < steps):
        engine.step()
        count += 1
        if (
            not decode_only
            and all(
                r.num_computed_tokens >= r.num_prompt_tokens for r in engine.engine_core.scheduler.running
            )
            and not engine.engine_core.scheduler.waiting
        ):
            break
    total = time.perf_counter() - start
    print(f"\n{label}: {count} steps, {total / max(count, 1) * 1000:.1f} ms/step")
    for name, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20}{seconds / max(count, 1) * 1000:>9.2f} ms/step  {seconds / total:>6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument("--quantization", default=None, help="int8 or int4 (default: the checkpoint's)")
    parser.add_argument("--torch-profile", action="store_true", help="top torch ops of 5 decode steps")
    parser.add_argument(
        "--torch-profile-prefill", action="store_true", help="top torch ops of 2 prefill steps"
    )
    args = parser.parse_args()

    llm = LLM(
        args.model,
        dtype=args.dtype,
        kv_cache_memory=1,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs,
        quantization=args.quantization,
    )
    engine = llm.engine
    prompts = random_prompts(args.num_prompts, args.input_len, engine.model_config.vocab_size, 0)
    params = SamplingParams(temperature=1.0, max_tokens=args.output_len, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    instrument(llm)
    if args.torch_profile_prefill:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(2):
                engine.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    run_phase(llm, "prefill (until every prompt is computed)", None, decode_only=False)
    run_phase(llm, "decode", 20, decode_only=True)
    if args.torch_profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(5):
                engine.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    while engine.has_unfinished_requests():
        engine.step()


if __name__ == "__main__":
    main()

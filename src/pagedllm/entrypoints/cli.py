"""The `pagedllm` command: serve, generate, chat, bench."""

from __future__ import annotations

import argparse
import logging
import sys

from pagedllm.engine.arg_utils import (
    DEFAULT_MODEL,
    MODEL_HELP,
    add_engine_args,
    add_sampling_args,
    engine_config_from_args,
)
from pagedllm.sampling_params import SamplingParams


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.sampling_seed,
        ignore_eos=args.ignore_eos,
        stop=args.stop,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.llm import LLM

    llm = LLM.from_engine_config(engine_config_from_args(args))
    prompts = args.prompts or [sys.stdin.read()]
    outputs = llm.generate(prompts, _sampling_params(args))
    for prompt, output in zip(prompts, outputs):
        if len(prompts) > 1:
            print(f"=== {prompt!r}")
        print(prompt + output.outputs[0].text if args.echo else output.outputs[0].text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.interactive_chat import run_chat

    return run_chat(engine_config_from_args(args), _sampling_params(args), args.system)


def cmd_serve(args: argparse.Namespace) -> int:
    from pagedllm.entrypoints.openai.server import run_server

    return run_server(args)


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from pagedllm.bench.throughput import run_throughput_benchmark

    run_throughput_benchmark(args)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from pagedllm.bench.serve import BenchmarkError, run_serve_benchmark

    try:
        result = run_serve_benchmark(args)
    except BenchmarkError as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 1
    return 0 if result["completed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedllm", description="LLM inference engine")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING, ... (serve: INFO, else WARNING)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    serve.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=MODEL_HELP)
    add_engine_args(serve, model_flag=False)
    from pagedllm.entrypoints.openai.server import add_server_args

    add_server_args(serve)
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="complete one or more prompts")
    add_engine_args(gen)
    add_sampling_args(gen)
    gen.add_argument("--echo", action="store_true", help="print the prompt before its completion")
    gen.add_argument("prompts", nargs="*", help="prompts (read from stdin when none)")
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat with the model's chat template")
    add_engine_args(chat)
    add_sampling_args(chat, max_tokens=512)
    chat.add_argument("--system", default=None, help="system prompt")
    chat.set_defaults(func=cmd_chat)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    throughput = bench_sub.add_parser("throughput", help="offline throughput on random prompts")
    add_engine_args(throughput)
    from pagedllm.bench.throughput import add_throughput_args

    add_throughput_args(throughput)
    throughput.set_defaults(func=cmd_bench_throughput)
    serve_bench = bench_sub.add_parser("serve", help="load a running OpenAI-compatible server")
    from pagedllm.bench.serve import add_serve_args

    add_serve_args(serve_bench)
    serve_bench.set_defaults(func=cmd_bench_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pagedllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

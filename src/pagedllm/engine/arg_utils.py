"""Command-line flags shared by every subcommand that starts an engine, and the `EngineConfig`
(and sampling flags) they parse into.

In the engine layer so that both the CLI and the benchmarks it runs can use it."""

from __future__ import annotations

import argparse

from pagedllm.config import (
    ATTENTION_BACKENDS,
    DISTRIBUTED_EXECUTOR_BACKENDS,
    LOAD_FORMATS,
    QUANTIZATION_METHODS,
    RAY_PLACEMENT_STRATEGIES,
    EngineConfig,
)

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_HELP = "local path, alias or hub id (--load-format dummy: a config.json, its folder, or a shape name)"


def add_engine_args(parser: argparse.ArgumentParser, model_flag: bool = True) -> None:
    """Engine options; `--model` too unless the subcommand takes the model positionally."""
    if model_flag:
        parser.add_argument("--model", "-m", default=DEFAULT_MODEL, help=MODEL_HELP)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if present)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="token budget per step (default 2048; `serve`: 1024, for shorter first-token latency)",
    )
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    parser.add_argument("--kv-cache-memory", type=float, default=None, help="KV cache budget in GiB")
    parser.add_argument("--num-kv-blocks", type=int, default=None, help="exact number of KV blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-template", default=None, help="file holding a Jinja chat template")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer from another model (path, alias or hub id; default: the model's own)",
    )
    parser.add_argument(
        "--load-format",
        default="auto",
        choices=LOAD_FORMATS,
        help="dummy: seeded random weights for a config alone (a config.json, or a shape name such "
        "as llama-3.1-8b), built on the target device, for benchmarking shapes without a checkpoint",
    )
    parser.add_argument(
        "--quantization",
        default="none",
        choices=QUANTIZATION_METHODS,
        help="weight-only quantization of the linear layers and LM head (int4: 4-bit groups of 32, "
        "taken as they are from a GGUF's Q4_0/Q4_1 tensors; int4-g128: groups of 128, or 64 / 32 "
        "where K is not a multiple, 4.25 bits per weight; int8: per-row int8)",
    )
    parser.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="split the model over this many ranks (processes; gloo on CPU, NCCL on GPUs)",
    )
    parser.add_argument(
        "--data-parallel-size",
        "-dp",
        type=int,
        default=1,
        help="run this many engine replicas (each with --tensor-parallel-size ranks) behind one "
        "front end, which routes each request by load and prefix-cache affinity",
    )
    parser.add_argument(
        "--distributed-executor-backend",
        default="mp",
        choices=DISTRIBUTED_EXECUTOR_BACKENDS,
        help="how ranks and replicas are started: mp (local processes) or ray (actors on the Ray "
        "cluster this node belongs to; pip install 'pagedllm[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster to join (default: $RAY_ADDRESS, else the one started on this node)",
    )
    parser.add_argument(
        "--ray-placement-strategy",
        default="PACK",
        choices=RAY_PLACEMENT_STRATEGIES,
        help="how a replica's ranks are placed on the cluster's nodes (PACK: together where they fit)",
    )
    queue = parser.add_argument_group("admission control (per engine replica)")
    queue.add_argument(
        "--max-num-queued-requests",
        type=int,
        default=None,
        help="requests that may wait for a seat beyond --max-num-seqs; more get a 429 (default: unbounded)",
    )
    queue.add_argument(
        "--max-num-queued-tokens",
        type=int,
        default=None,
        help="prompt tokens those waiting requests may hold; more get a 429 (default: unbounded)",
    )
    queue.add_argument(
        "--max-queue-wait",
        type=float,
        default=None,
        help="seconds a request may wait for its first step; longer gets a 429 (default: unbounded)",
    )
    recovery = parser.add_argument_group("engine recovery (the engine core in its own process)")
    recovery.add_argument(
        "--max-engine-restarts",
        type=int,
        default=3,
        help="engine cores started in place of dead or hung ones, per replica; then the server "
        "exits non-zero for a supervisor to restart it (default 3)",
    )
    recovery.add_argument(
        "--engine-watchdog",
        type=float,
        default=600.0,
        help="seconds without any step while requests wait after which an engine core is taken "
        "for hung and replaced (default 600; 0 turns it off)",
    )
    gpu = parser.add_argument_group("GPU")
    gpu.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.9,
        help="share of the GPU's memory for weights, activations and the KV cache (default 0.9)",
    )
    gpu.add_argument(
        "--enforce-eager",
        action="store_true",
        help="run decode steps eagerly instead of as captured CUDA graphs",
    )
    fast = parser.add_argument_group("platform fast paths (each on by default)")
    fast.add_argument(
        "--attention-backend",
        default="auto",
        choices=ATTENTION_BACKENDS,
        help="auto: the platform's choice; torch: the portable reference; cpu: the compiled CPU "
        "kernel; triton: the Triton kernels (on CPU only under TRITON_INTERPRET=1) "
        "($PAGEDLLM_ATTENTION_BACKEND)",
    )
    fast.add_argument(
        "--no-cpu-kernels",
        action="store_true",
        help="run the pure-torch path instead of the compiled CPU kernels ($PAGEDLLM_CPU_KERNELS=0)",
    )
    packing = fast.add_mutually_exclusive_group()
    packing.add_argument(
        "--packed-weights",
        dest="packed_weights",
        action="store_const",
        const=True,
        default=None,
        help="pack bf16 weights for the compiled matmul even where the platform would not (on CPUs "
        "with AMX whose kernel build lacks the tile kernel, e.g. PAGEDLLM_CPU_ISA=avx2, it keeps them "
        "plain for oneDNN) ($PAGEDLLM_PACKED_WEIGHTS=1)",
    )
    packing.add_argument(
        "--no-packed-weights",
        dest="packed_weights",
        action="store_const",
        const=False,
        help="keep bf16 weights as loaded instead of packed for the compiled matmul ($PAGEDLLM_PACKED_WEIGHTS=0)",
    )
    packing.add_argument(
        "--onednn-weights",
        action="store_true",
        help="CPU: pack bf16 weights once for oneDNN's matmul (with AMX: faster batches and "
        "prefill, slower single-stream decode) ($PAGEDLLM_ONEDNN_WEIGHTS=1)",
    )
    fast.add_argument(
        "--no-step-compiler",
        action="store_true",
        help="run the decoder layers from Python instead of as one compiled call ($PAGEDLLM_DECODER_STACK=0)",
    )
    fast.add_argument(
        "--no-huge-pages",
        action="store_true",
        help="CPU: keep the weights where the loader put them instead of copying them into transparent "
        "huge pages ($PAGEDLLM_HUGE_PAGES=0)",
    )


def engine_config_from_args(args: argparse.Namespace, model: str | None = None) -> EngineConfig:
    chat_template = None
    if args.chat_template:
        with open(args.chat_template) as f:
            chat_template = f.read()
    return EngineConfig(
        model=model or args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        enable_prefix_caching=not args.no_prefix_caching,
        kv_cache_memory=args.kv_cache_memory,
        num_kv_blocks=args.num_kv_blocks,
        seed=args.seed,
        device=args.device,
        chat_template=chat_template,
        quantization=None if args.quantization == "none" else args.quantization,
        cpu_kernels=not args.no_cpu_kernels,
        packed_weights=args.packed_weights,
        onednn_weights=args.onednn_weights,
        step_compiler=not args.no_step_compiler,
        huge_pages=not args.no_huge_pages,
        attention_backend=args.attention_backend,
        tokenizer=args.tokenizer,
        load_format=args.load_format,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        data_parallel_size=args.data_parallel_size,
        ray_address=args.ray_address,
        ray_placement_strategy=args.ray_placement_strategy,
        max_num_queued_requests=args.max_num_queued_requests,
        max_num_queued_tokens=args.max_num_queued_tokens,
        max_queue_wait=args.max_queue_wait,
        max_engine_restarts=args.max_engine_restarts,
        engine_watchdog=args.engine_watchdog or None,
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int = 128) -> None:
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--sampling-seed", type=int, default=None, help="per-request sampling seed")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")

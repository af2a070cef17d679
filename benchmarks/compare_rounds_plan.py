"""What `compare_rounds.py` runs: a model's workloads and files (Plan), the (engine, weight
format) pairs (Entry), and what one round measured (Round)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import setup_peers

ENGINE_LABELS = {"pagedllm": "pagedllm", "vllm": "vLLM", "llamacpp": "llama.cpp"}


@dataclass(frozen=True)
class Plan:
    """One model's workloads and files."""

    alias: str
    offline: tuple[int, int, int]  # requests, prompt tokens, output tokens
    single: tuple[int, int, int]  # prompt tokens, output tokens, repetitions per round
    serving: tuple[tuple[int, int], ...]  # (requests, concurrency)
    serving_lengths: tuple[int, int]  # prompt tokens, output tokens
    gguf: dict[str, tuple[str, Path]]  # format -> (llama.cpp type name, file)

    @property
    def hf_dir(self) -> Path:
        return setup_peers.hf_model_dir(self.alias)


def plan_for(alias: str, quick: bool) -> Plan:
    if alias == setup_peers.RANDOM_1B_ALIAS:
        plan = Plan(
            alias,
            offline=(32, 256, 64),
            single=(64, 64, 2),
            serving=((16, 8),),
            serving_lengths=(128, 64),
            gguf={
                "bf16": ("BF16", setup_peers.random_1b_gguf("bf16")),
                "int8": ("Q8_0", setup_peers.random_1b_gguf("q8_0")),
                # Each 4-bit format against llama.cpp's of its size: int4 (groups of 32 with a
                # zero point, 5 bits a weight) Q4_1, int4-g128 (4.25 bits) Q4_0 (4.5 bits).
                "int4": ("Q4_1", setup_peers.random_1b_gguf("q4_1")),
                "int4-g128": ("Q4_0", setup_peers.random_1b_gguf("q4_0")),
            },
        )
    elif alias == setup_peers.DEFAULT_ALIAS:
        plan = Plan(
            alias,
            offline=(128, 128, 128),
            single=(64, 128, 2),
            serving=((8, 1), (64, 8), (64, 32)),
            serving_lengths=(128, 128),
            gguf={
                "bf16": ("BF16", setup_peers.converted_gguf(setup_peers.DEFAULT_ALIAS, "bf16")),
                "int8": ("Q8_0", setup_peers.converted_gguf(setup_peers.DEFAULT_ALIAS, "q8_0")),
                "int4": ("Q4_1", setup_peers.default_gguf()),
                "int4-g128": ("Q4_1", setup_peers.default_gguf()),
            },
        )
    else:
        raise ValueError(f"no interleaved plan for {alias!r}")
    if quick:
        plan = dataclasses.replace(
            plan,
            offline=(4, 32, 8),
            single=(16, 8, 1),
            serving=tuple((4, c) for _, c in plan.serving),
            serving_lengths=(16, 8),
        )
    return plan


@dataclass(frozen=True)
class Entry:
    engine: str
    fmt: str  # bf16 | int8 | int4 | int4-g128: the weight format class (pagedllm's --quantization)

    def label(self, plan: Plan) -> str:
        if self.engine == "llamacpp":
            return f"llama.cpp {plan.gguf[self.fmt][0]}"
        return f"{ENGINE_LABELS[self.engine]} {self.fmt}"


@dataclass
class Round:
    """What one round measured: the probes, and each entry's figures (or errors)."""

    torch_gflops: float = 0.0
    packed_gflops: float = 0.0
    read_gbps: float = 0.0
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # entry label -> key -> value
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def entries_for(plan: Plan, engines: list[str], formats: list[str]) -> list[Entry]:
    """Grouped by format, so that engines on the same format run side by side in a round."""
    entries = []
    for fmt in formats:
        for engine in engines:
            if engine == "vllm" and fmt != "bf16":
                continue  # vLLM-CPU's weight-only int8/int4 need pre-quantized checkpoints
            if engine == "llamacpp" and fmt not in plan.gguf:
                continue
            entries.append(Entry(engine, fmt))
    return entries


def missing(entry: Entry, plan: Plan) -> str | None:
    if entry.engine == "vllm" and setup_peers.read_marker("vllm") is None:
        return "vLLM-CPU not built (benchmarks/setup_peers.py --only vllm)"
    if entry.engine in ("pagedllm", "vllm") and not (plan.hf_dir / "config.json").is_file():
        return f"{plan.hf_dir} missing (benchmarks/setup_peers.py)"
    if entry.engine == "llamacpp":
        if setup_peers.read_marker("llamacpp") is None:
            return "llama.cpp not built (benchmarks/setup_peers.py --only llamacpp)"
        if not plan.gguf[entry.fmt][1].is_file():
            builder = "gguf1b" if plan.alias == setup_peers.RANDOM_1B_ALIAS else "ggufdefault"
            return f"{plan.gguf[entry.fmt][1]} missing (benchmarks/setup_peers.py --only {builder} --force)"
    return None

"""Phase (e) of the GPU check: offline throughput of Llama 3.1 8B's shape in bf16 (dummy
weights), 256 requests x 512 prompt tokens -> 256 output tokens (ignore_eos), against
transformers' `generate` on the same shape built on the GPU without weight initialisation.

pagedllm runs `pagedllm bench throughput` in a process of its own (it takes 90% of the GPU's
memory), then transformers runs here once it has exited. transformers generates for a smaller
batch (`HF_REQUESTS`, one padded-free `generate` call) to fit the phase's time; both report
output tokens per second, so the ratio compares the engines' rates, not equal work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import suite_helpers
from report import PhaseReport, Timer

SHAPE = "llama-3.1-8b"
NUM_REQUESTS, INPUT_LEN, OUTPUT_LEN = 256, 512, 256
HF_REQUESTS = 64
# pagedllm's share of the phase's budget (see gpu_check.sh); transformers gets what is left.
ENGINE_TIMEOUT_S = 55


def run_pagedllm(tokenizer: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "pagedllm.entrypoints.cli", "bench", "throughput"]
    command += ["--model", SHAPE, "--load-format", "dummy", "--tokenizer", str(tokenizer)]
    command += ["--dtype", "bfloat16", "--device", "cuda", "--max-model-len", "1024"]
    command += ["--max-num-seqs", str(NUM_REQUESTS), "--max-num-batched-tokens", "8192"]
    command += ["--num-prompts", str(NUM_REQUESTS), "--input-len", str(INPUT_LEN)]
    command += ["--output-len", str(OUTPUT_LEN), "--output-json", str(out)]
    subprocess.run(command, check=True, timeout=ENGINE_TIMEOUT_S)
    return json.loads(out.read_text())


def run_transformers() -> dict:
    from hf_generate import throughput

    from pagedllm.model.loader.resolve import resolve_model

    config_folder = resolve_model(SHAPE, load_format="dummy").folder
    return throughput(config_folder, HF_REQUESTS, INPUT_LEN, OUTPUT_LEN)


def main() -> None:
    report = PhaseReport("throughput")
    workload = f"{INPUT_LEN} -> {OUTPUT_LEN}"
    ours = theirs = None
    with Timer() as t:
        try:
            folder = Path(tempfile.mkdtemp(prefix="gpu-check-throughput-"))
            ours = run_pagedllm(suite_helpers.tiny_tokenizer_folder(), folder / "pagedllm.json")
            figure = (
                f"{ours['output_tokens_per_s']:.0f} output tok/s, {ours['total_tokens_per_s']:.0f} total "
                f"({ours['elapsed_s']:.1f} s, {ours['num_preemptions']} preemptions)"
            )
        except Exception as error:
            traceback.print_exc()
            figure = f"{type(error).__name__}: {error}"
    report.row(f"pagedllm {NUM_REQUESTS} x {workload}", ours is not None, figure, t.seconds)
    with Timer() as t:
        try:
            theirs = run_transformers()
            figure = f"{theirs['output_tokens_per_s']:.0f} output tok/s ({theirs['elapsed_s']:.1f} s)"
        except Exception as error:
            traceback.print_exc()
            figure = f"{type(error).__name__}: {error}"
    report.row(f"transformers generate {HF_REQUESTS} x {workload}", theirs is not None, figure, t.seconds)
    if ours and theirs:
        ratio = ours["output_tokens_per_s"] / theirs["output_tokens_per_s"]
        report.headline(
            f"{ours['output_tokens_per_s']:.0f} output tok/s, {ratio:.1f}x transformers "
            f"({theirs['output_tokens_per_s']:.0f} at batch {HF_REQUESTS})"
        )
    else:
        report.headline("not measured (see the rows)", ok=False)


if __name__ == "__main__":
    main()

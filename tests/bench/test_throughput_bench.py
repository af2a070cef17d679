"""`pagedllm bench throughput` on a tiny random model: the line it prints and the JSON it writes."""

from __future__ import annotations

import json
import re

import tiny_models
from pagedllm.entrypoints.cli import main

KEYS = {
    "model",
    "dtype",
    "device",
    "num_prompts",
    "input_len",
    "output_len",
    "elapsed_s",
    "requests_per_s",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "prompt_tokens",
    "output_tokens",
    "num_preemptions",
    "structured_outputs",
    "prefix_cache_hit_tokens",
}


def test_bench_throughput_prints_and_writes_its_results(tmp_path, capsys):
    model = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "tiny-llama")
    out = tmp_path / "out.json"
    argv = ["bench", "throughput", "--model", str(model), "--dtype", "float32", "--device", "cpu"]
    argv += ["--num-kv-blocks", "64", "--block-size", "8", "--num-prompts", "6", "--input-len", "20"]
    argv += ["--output-len", "3", "--output-json", str(out)]

    assert main(argv) == 0

    line = capsys.readouterr().out.strip()
    assert re.fullmatch(
        r"Throughput: \d+\.\d\d requests/s, \d+\.\d output tokens/s, \d+\.\d total tokens/s "
        r"\(6 requests, 120 prompt \+ 18 output tokens in \d+\.\d s\)",
        line,
    ), line
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert (result["model"], result["dtype"], result["device"]) == (str(model), "float32", "cpu")
    assert (result["num_prompts"], result["input_len"], result["output_len"]) == (6, 20, 3)
    assert (result["prompt_tokens"], result["output_tokens"]) == (120, 18)
    # The warm-up requests share no prefix with the timed ones (20-token prompts fill two
    # 8-token blocks, which a repeated prompt would find cached).
    assert result["prefix_cache_hit_tokens"] == 0

"""Prints, as one JSON line, the KV capacity an engine on CUDA sizes for itself.

test_gpu_kv_sizing runs this in a process of its own per setting, so every measurement starts
from a GPU that holds nothing of the previous one.
Usage: python gpu_kv_capacity.py SHAPE GPU_MEMORY_UTILIZATION TOKENIZER_FOLDER
"""

from __future__ import annotations

import json
import sys

import torch

from pagedllm import LLM


def main() -> None:
    shape, utilization, tokenizer = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    llm = LLM(
        shape,
        load_format="dummy",
        tokenizer=tokenizer,
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=utilization,
        # No graphs to capture (faster; their reserve is the same at both utilizations anyway).
        enforce_eager=True,
    )
    runner = llm.engine.engine_core.executor.runner
    print(
        json.dumps(
            {
                "num_kv_blocks": llm.engine.info.num_kv_blocks,
                "bytes_per_block": runner.kv_bytes_per_block(),
                "total_memory": torch.cuda.get_device_properties(0).total_memory,
            }
        )
    )


if __name__ == "__main__":
    main()

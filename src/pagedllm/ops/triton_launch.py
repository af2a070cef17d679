"""Triton launches of ops/ described as data, and what the launchers need to know about a device.

A launch record is what the launchers run and what a compile check builds for a GPU target
without a GPU (tests/ops/compile_triton_quant_kernels.py). Nothing here imports triton: the
kernel modules are imported only once a weight needs them, because decorating a kernel is
where Triton reads TRITON_INTERPRET.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch

INTERPRET_ENV = "TRITON_INTERPRET"
# Hopper's count: the tile choice on CPU (the interpreter) plans for an H100-sized GPU.
DEFAULT_MULTIPROCESSORS = 132


@dataclass
class TritonLaunch:
    """`kernel[grid](*args, **constants, num_warps=num_warps, num_stages=num_stages)`."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3

    def run(self) -> None:
        self.kernel[self.grid](
            *self.args, **self.constants, num_warps=self.num_warps, num_stages=self.num_stages
        )


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (split-K fills them); a Hopper's count elsewhere."""
    if device.type != "cuda":
        return DEFAULT_MULTIPROCESSORS
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_runs_on(device: torch.device, kernel: Any) -> None:
    """Raise a RuntimeError saying what to do when `kernel` cannot run on tensors of `device`:
    on CUDA Triton compiles it; anywhere else only Triton's interpreter runs it, switched on
    (TRITON_INTERPRET=1) before the kernel module was imported."""
    if device.type == "cuda":
        return
    if type(kernel).__name__ != "InterpretedFunction":
        hint = (
            "it was imported before TRITON_INTERPRET=1 was set"
            if os.environ.get(INTERPRET_ENV) == "1"
            else f"set {INTERPRET_ENV}=1 in the environment before starting Python (slow; for tests)"
        )
        raise RuntimeError(
            f"the Triton quantized matmuls run on {device.type} tensors only in Triton's interpreter: "
            f"{hint}; on CPU use the CPU platform's weight formats"
        )

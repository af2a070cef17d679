"""What every Triton kernel of ours shares: launches described as data, the device checks, and
the dot precision.

A launch record is what the launchers run and what the compile checks build for a GPU target
without a GPU (tests/triton_compile.py). Nothing here imports triton: kernel modules are
imported only once they are needed, because decorating a kernel is where Triton reads
TRITON_INTERPRET. Used by the attention kernels (attention/triton_ops/) and the quantized
matmuls (ops/triton_quant_*.py).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from pagedllm.config import ConfigError

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


def dot_precision(dtype: torch.dtype) -> str | None:
    """float32 inputs multiply in full precision (GPUs would otherwise round them to TF32)."""
    return "ieee" if dtype == torch.float32 else None


def check_triton_usable(device: torch.device, what: str, instead: str = "") -> None:
    """Raise `ConfigError` saying what to do when Triton cannot run `what` (kernels) on `device`,
    before any kernel module is imported: triton must be installed, and off CUDA only Triton's
    interpreter runs kernels, switched on (TRITON_INTERPRET=1) before pagedllm starts.
    `instead`: what the user may choose instead, appended to the message."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"{what} need the `triton` package ({exc}); pip install triton") from exc
    if device.type != "cuda" and os.environ.get(INTERPRET_ENV) != "1":
        raise ConfigError(
            f"{what} run on {device.type} only in Triton's interpreter, which must be on before "
            f"pagedllm starts: set {INTERPRET_ENV}=1 in the environment (slow; meant for testing "
            f"the kernels){instead}"
        )


def check_runs_on(device: torch.device, kernel: Any, what: str) -> None:
    """Raise `ConfigError` when `kernel` (decorated already) cannot run on tensors of `device`:
    off CUDA it must be an interpreted kernel, i.e. TRITON_INTERPRET=1 was set before its module
    was imported."""
    if device.type == "cuda" or type(kernel).__name__ == "InterpretedFunction":
        return
    hint = (
        "they were imported before TRITON_INTERPRET=1 was set"
        if os.environ.get(INTERPRET_ENV) == "1"
        else f"set {INTERPRET_ENV}=1 in the environment before starting Python (slow; for tests)"
    )
    raise ConfigError(f"{what} run on {device.type} tensors only in Triton's interpreter: {hint}")

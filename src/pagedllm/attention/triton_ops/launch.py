"""A kernel launch described as data: what the launchers run, and what a compile check builds
for a GPU target without a GPU (tests/attention/compile_triton_kernels.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class KernelLaunch:
    """`kernel[grid](*args, **constants, num_warps=num_warps)`."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4

    def run(self) -> None:
        self.kernel[self.grid](*self.args, **self.constants, num_warps=self.num_warps)

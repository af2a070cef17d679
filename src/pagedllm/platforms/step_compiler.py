"""Step compilers: a whole decoder stack run as one compiled call.

A platform may offer a `StepCompiler`; after the runner binds the KV caches it asks it to
`compile(model)`, which reads the model's explicit description (`fusion_spec()`,
model/layers/fusion_spec.py) and returns a `CompiledStep`, or None when the model cannot be
described or the platform cannot run what it describes (the model's Python layers then run
every step). On CPU this is the fused decoder stack (the interpreter removed between ~330
kernel calls per step); on a GPU it is where CUDA graphs belong. A compiled step must give the
Python layers' results bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from pagedllm.attention.metadata import AttentionMetadata


class CompiledStep(ABC):
    """Token ids -> final hidden states for the steps it `applies` to."""

    name: str = "abstract"

    @abstractmethod
    def applies(self, positions: torch.Tensor, md: AttentionMetadata) -> bool:
        """Whether this step can run compiled (else the Python layers run it)."""

    @abstractmethod
    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        """The model's hidden states [T, hidden] after the final norm."""


class StepCompiler(ABC):
    """Compiles a loaded model with bound KV caches; see the module docstring."""

    name: str = "abstract"

    @abstractmethod
    def compile(self, model: nn.Module) -> CompiledStep | None:
        """The compiled step, or None (the reason is logged)."""

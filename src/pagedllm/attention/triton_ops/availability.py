"""Whether the Triton kernels can run on a device, and a clear error when they cannot."""

from __future__ import annotations

import os

import torch

from pagedllm.config import ConfigError

INTERPRET_ENV = "TRITON_INTERPRET"


def check_triton_runs_on(device: torch.device) -> None:
    """Raise `ConfigError` saying what to do when Triton cannot run kernels on `device`.

    On CUDA, Triton compiles them; anywhere else only Triton's interpreter runs them, and it
    has to be switched on (TRITON_INTERPRET=1) before the kernels are decorated, i.e. before
    pagedllm starts.
    """
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the Triton attention backend needs the `triton` package ({exc}); pip install triton"
        ) from exc
    if device.type == "cuda":
        return
    if os.environ.get(INTERPRET_ENV) != "1":
        raise ConfigError(
            f"--attention-backend triton on {device.type} runs the kernels in Triton's interpreter, "
            f"which must be on before pagedllm starts: set {INTERPRET_ENV}=1 in the environment "
            "(slow; meant for testing the kernels). On CPU use --attention-backend cpu or torch."
        )


def check_interpreted(kernel) -> None:
    """Raise when a kernel was decorated for a GPU although we run on CPU (TRITON_INTERPRET
    was set after the kernel modules had been imported)."""
    if type(kernel).__name__ != "InterpretedFunction":
        raise ConfigError(
            f"the Triton kernels were imported before {INTERPRET_ENV}=1 was set, so they were "
            f"built for a GPU; set {INTERPRET_ENV}=1 in the environment before starting Python"
        )

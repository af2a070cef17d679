"""The cache root every part of pagedllm writes under: `$PAGEDLLM_CACHE`, else `~/.cache/pagedllm`.

A leaf module (it imports nothing from pagedllm), so the lowest layers (the compiled kernels,
the model loader) and the benchmarks can all use it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PAGEDLLM_CACHE"


def cache_dir() -> Path:
    """The cache root: `$PAGEDLLM_CACHE`, else `~/.cache/pagedllm`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "pagedllm"

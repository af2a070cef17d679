"""Compiled CPU kernels (src/pagedllm/csrc/*.cpp), built on first use and cached on disk.

The kernels register as `torch.ops.pagedllm.*`. They are compiled once per machine (21 s
measured for the five sources on 2 cores) with the host's own instruction set into
`<cache>/kernels/<key>/`, where `<key>` covers the sources, torch's version and the CPU's
flags, so later starts only load the library. Where no compiler is available the build fails once, a warning says why, and
callers keep their torch code paths (`available()` is False).

`PAGEDLLM_CPU_KERNELS=0` turns the kernels off (the pure torch paths then run everywhere).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch

from pagedllm.cache_dir import cache_dir

logger = logging.getLogger(__name__)

DISABLE_ENV = "PAGEDLLM_CPU_KERNELS"
_SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"


def _sources() -> list[Path]:
    """Every translation unit (cpu_ops.cpp defines the op library, the others add fragments)."""
    return sorted(_SOURCE_DIR.glob("*.cpp"))


_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++20"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build_key() -> str:
    digest = hashlib.sha256()
    for path in sorted(_SOURCE_DIR.glob("*.[ch]*")):  # sources and headers
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(_FLAGS).encode())
    digest.update(_cpu_fingerprint().encode())
    return digest.hexdigest()[:16]


def _load() -> bool:
    from torch.utils.cpp_extension import load

    key = _build_key()
    build_dir = cache_dir() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch.utils.cpp_extension serialises concurrent builds of one folder with a lock file.
    load(
        name=f"pagedllm_cpu_ops_{key}",
        sources=[str(p) for p in _sources()],
        extra_cflags=_FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    return hasattr(torch.ops.pagedllm, "paged_attention")


def available() -> bool:
    """True when the CPU kernels are built and loaded (building them the first time)."""
    if "ok" in _state:
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            if os.environ.get(DISABLE_ENV, "1") == "0":
                _state["ok"] = False
            else:
                try:
                    _state["ok"] = _load()
                except Exception as exc:  # a missing compiler or headers: fall back to torch code
                    logger.warning("CPU kernels unavailable, using torch code paths: %s", exc)
                    _state["ok"] = False
    return bool(_state["ok"])


def use_for(tensor: torch.Tensor) -> bool:
    """Whether a CPU kernel should handle `tensor` (on the CPU, kernels built)."""
    return tensor.device.type == "cpu" and available()


GEMV_MAX_ROWS = 256  # the kernel's limit; ops/linear.py picks where it pays off


def gemv_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `torch.ops.pagedllm.gemv_bf16` takes x @ weight^T: bf16 on a CPU with AVX512-BF16,
    at most GEMV_MAX_ROWS rows, K a multiple of 32 (else callers use F.linear)."""
    return (
        x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.dim() == 2
        and x.shape[0] <= GEMV_MAX_ROWS
        and x.shape[1] % 32 == 0
        and x.stride(1) == 1
        and weight.is_contiguous()
        and has_avx512_bf16()
        and use_for(x)
    )


def int4_gemv_supported(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """Whether `torch.ops.pagedllm.gemv_int4` can serve 4-bit weights with `dtype` activations on
    `device`: bf16 on a CPU with AVX512-BF16, kernels built (else the weights keep torch's layout)."""
    return (
        dtype == torch.bfloat16 and torch.device(device).type == "cpu" and has_avx512_bf16() and available()
    )


def has_avx512_bf16() -> bool:
    """Whether the CPU has AVX512-BF16 dot products (the bf16 kernels' instruction set)."""
    if "bf16" not in _state:
        _state["bf16"] = "avx512_bf16" in _cpu_fingerprint()
    return bool(_state["bf16"])


def vnni_layout(cache: torch.Tensor) -> bool:
    """Whether a [kv_heads, blocks, block_size, head_dim] cache uses the blocked bf16 layout the
    attention kernel reads with AVX512-BF16 dot products (bf16, 16-token blocks, head_dim % 32)."""
    return (
        cache.dtype == torch.bfloat16
        and cache.shape[2] == 16
        and cache.shape[3] % 32 == 0
        and has_avx512_bf16()
    )

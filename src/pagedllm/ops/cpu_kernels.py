"""Compiled CPU kernels (src/pagedllm/csrc/*.cpp), built on first use and cached on disk.

The kernels register as `torch.ops.pagedllm.*`. They are compiled once per machine (the cold
build time is in docs/architecture.md) with the host's own instruction set into
`<cache>/kernels/<key>/`, where `<key>` covers the sources, torch's version and the CPU's
flags, so later starts only load the library. Where no compiler is available the build fails once, a warning says why, and
callers keep their torch code paths (`available()` is False).

`PAGEDLLM_CPU_KERNELS=0` turns the kernels off for the whole process (read once): the CPU
platform then runs the pure torch paths everywhere, which is what other devices start from.
Which kernel serves which layer is the platform's decision (pagedllm/platforms/cpu.py), made
once at start-up; this module only builds, loads and describes the library.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pagedllm.cache_dir import cache_dir

logger = logging.getLogger(__name__)

DISABLE_ENV = "PAGEDLLM_CPU_KERNELS"
_SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"


def _sources() -> list[Path]:
    """Every translation unit (registration.cpp registers every op, the others implement them)."""
    return sorted(_SOURCE_DIR.glob("*.cpp"))


_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++20"]

_lock = threading.Lock()
_state: dict[str, object] = {}
_ops: dict[str, Callable] = {}


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
    key = _build_key()
    build_dir = cache_dir() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"pagedllm_cpu_ops_{key}"
    library = build_dir / f"{name}.so"
    # The key covers every source, header, flag, torch version and CPU: a library under it is
    # current, so load it without asking the build tool, which re-checks ~1,500 header
    # dependencies (and rebuilds all when the sources' path changes). A build in progress holds
    # torch's lock file; then, or if loading fails, the build path below waits and checks.
    if library.exists() and not (build_dir / "lock").exists():
        try:
            torch.ops.load_library(str(library))
            return hasattr(torch.ops.pagedllm, "paged_attention")
        except (OSError, RuntimeError) as exc:
            logger.warning("cached CPU kernels at %s did not load (%s); rebuilding", library, exc)
    # Imported only to build: it pulls in setuptools (~0.1 s of every start otherwise).
    from torch.utils.cpp_extension import load

    compiling = not library.exists()
    if compiling:
        logger.info("compiling the CPU kernels for this machine (once; cached in %s) ...", build_dir)
    start = time.perf_counter()
    # torch.utils.cpp_extension serialises concurrent builds of one folder with a lock file.
    load(
        name=name,
        sources=[str(p) for p in _sources()],
        extra_cflags=_FLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    if compiling:
        logger.info("compiled the CPU kernels in %.1f s", time.perf_counter() - start)
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


def op(name: str) -> Callable:
    """`torch.ops.pagedllm.<name>.default`, looked up once (call after `available()`)."""
    handle = _ops.get(name)
    if handle is None:
        handle = _ops[name] = getattr(torch.ops.pagedllm, name).default
    return handle


def has_avx512_bf16() -> bool:
    """Whether the CPU has AVX512-BF16 dot products (the bf16 kernels' instruction set)."""
    if "bf16" not in _state:
        _state["bf16"] = "avx512_bf16" in _cpu_fingerprint()
    return bool(_state["bf16"])

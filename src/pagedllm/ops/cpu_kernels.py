"""Compiled CPU kernels (src/pagedllm/csrc/*.cpp), built on first use and cached on disk.

The kernels register as `torch.ops.pagedllm.*`. They are compiled once per machine (the cold
build time is in docs/architecture.md) into `<cache>/kernels/<key>/`, where `<key>` covers the
sources, torch's version, the flags and the CPU's flags, so later starts only load the library.
Where no compiler is available the build fails once, a warning says why, and callers keep
their torch code paths (`available()` is False).

Two builds exist (`TARGETS`), chosen once per process by `PAGEDLLM_CPU_ISA`:
- `native` (the default): this CPU's own instruction set (-march=native). On AVX512-BF16 CPUs
  the kernels use bf16 dot products; elsewhere (AVX-512 without BF16, or AVX2 only) their
  AVX2 + FMA paths.
- `avx2`: the x86-64-v3 instruction set (AVX2, FMA, F16C), what a CPU without AVX-512 runs. It
  registers its ops as `torch.ops.pagedllm_avx2.*`, so one process can load both builds and
  the tests compare the AVX2 paths with the reference on an AVX-512 machine
  (`forced_target`).
`instruction_set()` says which vector paths the loaded build has; the platform's choices of
kernels follow it.

`PAGEDLLM_CPU_KERNELS=0` turns the kernels off for the whole process (read once): the CPU
platform then runs the pure torch paths everywhere, which is what other devices start from.
Which kernel serves which layer is the platform's decision (pagedllm/platforms/cpu.py), made
once at start-up; this module only builds, loads and describes the library.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pagedllm.cache_dir import cache_dir

logger = logging.getLogger(__name__)

DISABLE_ENV = "PAGEDLLM_CPU_KERNELS"
TARGET_ENV = "PAGEDLLM_CPU_ISA"
_SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"


def _sources() -> list[Path]:
    """Every translation unit (registration.cpp registers every op, the others implement them)."""
    return sorted(_SOURCE_DIR.glob("*.cpp"))


@dataclass(frozen=True)
class KernelTarget:
    """One build of the kernel library: its compiler flags and its torch.ops namespace."""

    name: str
    namespace: str
    flags: tuple[str, ...]
    # CPU flags (/proc/cpuinfo) the build's code needs: one built for more than the CPU has
    # would die of an illegal instruction at its first vector op, so it is never loaded there.
    cpu_flags: tuple[str, ...] = ()


# Hidden visibility keeps the two builds' C++ symbols (same names) apart in one process.
_COMMON_FLAGS = ("-O3", "-fopenmp", "-std=c++20", "-fvisibility=hidden")
TARGETS = {
    "native": KernelTarget("native", "pagedllm", ("-march=native",)),
    "avx2": KernelTarget(
        "avx2",
        "pagedllm_avx2",
        ("-march=x86-64-v3", "-mtune=native", "-DPAGEDLLM_OPS_NAMESPACE=pagedllm_avx2"),
        ("avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"),  # x86-64-v3's vector and bit ops
    ),
}

_lock = threading.Lock()
_state: dict[str, object] = {}
_loaded: dict[str, bool] = {}  # target name -> whether its library loaded
_ops: dict[tuple[str, str], Callable] = {}
_instruction_sets: dict[str, str] = {}


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as /proc/cpuinfo names them (empty where it cannot be read)."""
    line = _cpu_fingerprint()
    return frozenset(line.split(":", 1)[1].split()) if line.startswith("flags") else frozenset()


def _flags(target: KernelTarget) -> list[str]:
    return [*_COMMON_FLAGS, *target.flags]


def _build_key(target: KernelTarget) -> str:
    digest = hashlib.sha256()
    for path in sorted(_SOURCE_DIR.glob("*.[ch]*")):  # sources and headers
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(" ".join(_flags(target)).encode())
    digest.update(_cpu_fingerprint().encode())
    return digest.hexdigest()[:16]


def _registered(target: KernelTarget) -> bool:
    return hasattr(getattr(torch.ops, target.namespace), "paged_attention")


def _load(target: KernelTarget) -> bool:
    key = _build_key(target)
    build_dir = cache_dir() / "kernels" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"pagedllm_cpu_ops_{target.name}_{key}"
    library = build_dir / f"{name}.so"
    # The key covers every source, header, flag, torch version and CPU: a library under it is
    # current, so load it without asking the build tool, which re-checks ~1,500 header
    # dependencies (and rebuilds all when the sources' path changes). A build in progress holds
    # torch's lock file; then, or if loading fails, the build path below waits and checks.
    if library.exists() and not (build_dir / "lock").exists():
        try:
            torch.ops.load_library(str(library))
            return _registered(target)
        except (OSError, RuntimeError) as exc:
            logger.warning("cached CPU kernels at %s did not load (%s); rebuilding", library, exc)
    # Imported only to build: it pulls in setuptools (~0.1 s of every start otherwise).
    from torch.utils.cpp_extension import load

    compiling = not library.exists()
    if compiling:
        logger.info("compiling the CPU kernels (%s build; once, cached in %s) ...", target.name, build_dir)
    start = time.perf_counter()
    # torch.utils.cpp_extension serialises concurrent builds of one folder with a lock file.
    load(
        name=name,
        sources=[str(p) for p in _sources()],
        extra_cflags=_flags(target),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    if compiling:
        logger.info("compiled the CPU kernels in %.1f s", time.perf_counter() - start)
    return _registered(target)


def selected_target() -> KernelTarget:
    """The build this process uses: `PAGEDLLM_CPU_ISA` (native or avx2), native by default."""
    name = os.environ.get(TARGET_ENV, "native").strip().lower() or "native"
    if name not in TARGETS:
        raise ValueError(f"{TARGET_ENV}={name!r} names no kernel build; use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def load_target(target: KernelTarget) -> bool:
    """Builds (the first time) and loads one build; False, with a warning, where it cannot."""
    with _lock:
        if target.name not in _loaded:
            missing = [flag for flag in target.cpu_flags if flag not in cpu_flags()]
            if missing:
                logger.warning(
                    "CPU kernels (%s build) need CPU features %s that this CPU lacks; using torch code paths",
                    target.name,
                    ", ".join(missing),
                )
                _loaded[target.name] = False
                return False
            try:
                _loaded[target.name] = _load(target)
            except Exception as exc:  # a missing compiler or headers: fall back to torch code
                logger.warning(
                    "CPU kernels (%s build) unavailable, using torch code paths: %s", target.name, exc
                )
                _loaded[target.name] = False
    return _loaded[target.name]


def available() -> bool:
    """True when the CPU kernels are built and loaded (building them the first time)."""
    if "ok" in _state:
        return bool(_state["ok"])
    if os.environ.get(DISABLE_ENV, "1") == "0":
        _state["ok"] = False
        return False
    target = selected_target()
    ok = load_target(target)
    _state["namespace"] = target.namespace
    _state["ok"] = ok
    return ok


def op(name: str) -> Callable:
    """`torch.ops.<namespace>.<name>.default` of the build in use, looked up once (call after
    `available()`)."""
    namespace = _state.get("namespace", "pagedllm")
    handle = _ops.get((namespace, name))
    if handle is None:
        handle = _ops[namespace, name] = getattr(getattr(torch.ops, namespace), name).default
    return handle


def amx_tiles() -> bool:
    """Whether the build in use runs our AMX tile kernels (packed bf16 matmuls, int8 and 4-bit
    batches): built for an AMX-BF16 CPU (the native build there) and granted the tile state by
    Linux (call after `available()`)."""
    return bool(op("amx_tiles")())


def has_op(name: str) -> bool:
    """Whether the build in use registers `name` (call after `available()`)."""
    return hasattr(getattr(torch.ops, _state.get("namespace", "pagedllm")), name)


def instruction_set() -> str:
    """The vector paths of the build in use: "avx512_bf16", "avx2" or "scalar" ("scalar" also
    when the kernels are off)."""
    if not available():
        return "scalar"
    namespace = str(_state["namespace"])
    if namespace not in _instruction_sets:
        _instruction_sets[namespace] = op("instruction_set")()
    return _instruction_sets[namespace]


@contextmanager
def forced_target(name: str) -> Iterator[KernelTarget]:
    """Within the block, `op()` and `instruction_set()` answer for build `name` (built and
    loaded the first time): how tests run an older instruction set's paths on this CPU.
    Raises RuntimeError where the build cannot load (no compiler, or a CPU without its
    instruction set)."""
    target = TARGETS[name]
    if not available() or not load_target(target):
        raise RuntimeError(f"the {name} build of the CPU kernels cannot be loaded on this machine")
    previous = _state["namespace"]
    _state["namespace"] = target.namespace
    try:
        yield target
    finally:
        _state["namespace"] = previous

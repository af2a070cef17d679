"""CPU process set-up: threads, the allocator, and whether bf16 is fast here."""

from __future__ import annotations

import contextlib
import os

import torch

from pagedllm.ops.cpu_kernels import cpu_flags


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX lets bf16 matmuls run ~4x faster than fp32 on CPU."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx_bf16() -> bool:
    """Intel AMX with bf16 tiles that torch's oneDNN can use: the CPU has them, and torch finds
    the tiles usable (its check includes the kernel's permission for the process)."""
    amx_usable = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "amx_bf16" in cpu_flags() and (amx_usable is None or bool(amx_usable()))


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit


def tune_cpu_allocator() -> bool:
    """Keep large tensors on the heap instead of fresh mmaps.

    glibc serves allocations above a threshold with mmap and unmaps them on free, so every
    step's multi-MB activations page-fault again: an RMSNorm over 2048 x 576 took 2.6 ms
    instead of 0.5 ms here. Raising the mmap and trim thresholds lets freed memory be reused.
    Returns False where glibc's mallopt is unavailable (nothing changes then).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok


def usable_cpu_count() -> int:
    """Cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def replica_cores(index: int, count: int) -> set[int] | None:
    """The cores local data-parallel replica `index` of `count` takes: an even, contiguous share
    of those this process may use (the remainder to the first replicas); None when there are
    fewer cores than replicas (they then share all of them)."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(usable) < count:
        return None
    share, extra = divmod(len(usable), count)
    start = index * share + min(index, extra)
    return set(usable[start : start + share + (1 if index < extra else 0)])


def configure_model_threads(num_ranks: int = 1) -> int:
    """Give the model every usable core (split evenly between `num_ranks` processes sharing the
    machine) unless the user chose (`OMP_NUM_THREADS`); returns the count.

    Runs in the process that executes the model. Inter-op parallelism stays at one thread: the
    engine runs one op at a time and a second pool would only compete for the same cores.
    """
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, usable_cpu_count() // num_ranks)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # fixed once any inter-op work has started
        torch.set_num_interop_threads(1)
    return threads


def configure_frontend_threads() -> None:
    """A server process whose model runs elsewhere keeps one intra-op thread, so its occasional
    torch work (sampling-parameter checks, tensors for logit bias) never competes with the
    model's thread pool for cores."""
    torch.set_num_threads(1)


PIN_THREADS_ENV = "PAGEDLLM_PIN_THREADS"


def pin_process_threads(main_cores: set[int], other_cores: set[int]) -> bool:
    """Pin this process's main thread to `main_cores` and each of its other threads to
    `other_cores` (threads started later inherit their creator's cores); False if the OS
    refused."""
    pid = os.getpid()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), main_cores if int(tid) == pid else other_cores)
    except (AttributeError, OSError, ValueError):
        return False
    return True


def pin_engine_core_threads(num_threads: int) -> list[int]:
    """In an engine core process whose model threads take every usable core: the main thread
    (which runs the step's serial work and is the thread pool's first thread) gets the first
    core to itself, every other thread the rest. Returns the cores left to the server's
    threads (empty when nothing was pinned: fewer than 2 cores, the threads not taking all of
    them, or PAGEDLLM_PIN_THREADS=0).

    The server's threads then run beside the pool's other threads only: when they wake for a
    step's outputs they no longer preempt the main thread, whose serial work between two
    forward passes every other thread waits on."""
    if os.environ.get(PIN_THREADS_ENV, "1") == "0":
        return []
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []
    if len(usable) < 2 or num_threads != len(usable):
        return []
    others = set(usable[1:])
    return sorted(others) if pin_process_threads({usable[0]}, others) else []


# The cores this process had before pin_frontend_threads confined it: what a core process it
# starts later (a restart after a crash) must get back.
_cores_before_pinning: set[int] | None = None


def pin_frontend_threads(cores: list[int]) -> bool:
    """Pin every thread of this (server) process, and so every thread it starts later, to
    `cores`: those its engine core left to it (`pin_engine_core_threads`)."""
    global _cores_before_pinning
    if not cores:
        return False
    try:
        before = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    if not pin_process_threads(set(cores), set(cores)):
        return False
    if _cores_before_pinning is None:
        _cores_before_pinning = before
    return True


@contextlib.contextmanager
def unpinned_cores():
    """Run the block with the calling thread on the cores this process had before
    `pin_frontend_threads` (a process started inside inherits them), then confine it again."""
    saved = None
    if _cores_before_pinning is not None:
        try:
            saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, _cores_before_pinning)
        except OSError:
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, saved)

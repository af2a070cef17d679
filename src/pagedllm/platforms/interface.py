"""The platform seam: everything that depends on the device, decided once at start-up.

A `Platform` owns the default dtype, the attention backend, the KV-cache memory budget, the
process set-up (threads, allocator), which compiled ops and weight formats the model layers get
(`layer_ops`), the sampler's fused kernel and the step compiler. The engine resolves one from
the device (`pagedllm.platforms.resolve_platform`); nothing below it asks which device it is on.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.config import ATTENTION_BACKENDS, CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from pagedllm.model.layers.layer_ops import LayerOps
from pagedllm.ops import cpu_kernels
from pagedllm.platforms.step_compiler import StepCompiler

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GiB = 1 << 30

# Environment switches that override the config fields (read once, in `PlatformOptions.resolve`).
# The kernels' own switch is the one `cpu_kernels.available()` honours, so kernel tests skip too.
CPU_KERNELS_ENV = cpu_kernels.DISABLE_ENV
PACKED_WEIGHTS_ENV = "PAGEDLLM_PACKED_WEIGHTS"
ONEDNN_WEIGHTS_ENV = "PAGEDLLM_ONEDNN_WEIGHTS"
STEP_COMPILER_ENV = "PAGEDLLM_DECODER_STACK"
ATTENTION_BACKEND_ENV = "PAGEDLLM_ATTENTION_BACKEND"
HUGE_PAGES_ENV = "PAGEDLLM_HUGE_PAGES"


def _switch(env: str, configured: bool | None) -> bool | None:
    """ "0" turns a fast path off, any other value on (as `cpu_kernels.available()` reads it);
    unset leaves the configured value (None: the platform's choice)."""
    value = os.environ.get(env)
    return configured if value is None else value.strip() != "0"


@dataclass(frozen=True, slots=True)
class PlatformOptions:
    """The user's switches for the fast paths (each on by default).

    - `cpu_kernels`: the compiled CPU kernels (off: the pure-torch path other devices start from).
    - `packed_weights`: bf16 weights repacked for the compiled matmul (None: the platform's
      choice).
    - `onednn_weights`: bf16 weights packed once for oneDNN's matmul instead (opt-in).
    - `step_compiler`: the whole decoder stack as one compiled call (the CPU decoder stack).
    - `attention_backend`: "auto" (the platform's choice) or a backend the user forces.
    - `huge_pages`: weights copied into transparent huge pages after loading (CPU).
    - `enforce_eager`: no captured graphs (GPU): every step runs the model's Python layers.
    - `local_replica`: (index, count) of the data-parallel replicas started as local processes
      on this machine, which share its cores or devices; (0, 1) when there is one, or when a
      cluster manager (Ray) places them.
    """

    cpu_kernels: bool = True
    packed_weights: bool | None = None
    step_compiler: bool = True
    attention_backend: str = "auto"
    enforce_eager: bool = False
    local_replica: tuple[int, int] = (0, 1)
    onednn_weights: bool = False
    huge_pages: bool = True

    @classmethod
    def resolve(cls, config: EngineConfig) -> PlatformOptions:
        """The config's switches, each overridden by its environment variable if set
        (`PAGEDLLM_CPU_KERNELS`, `PAGEDLLM_PACKED_WEIGHTS`, `PAGEDLLM_ONEDNN_WEIGHTS`,
        `PAGEDLLM_DECODER_STACK`, `PAGEDLLM_HUGE_PAGES`: 0 = off;
        `PAGEDLLM_ATTENTION_BACKEND`: a backend name)."""
        backend = os.environ.get(ATTENTION_BACKEND_ENV, "").strip() or config.attention_backend
        if backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"{ATTENTION_BACKEND_ENV}={backend!r} is not an attention backend; "
                f"use one of {', '.join(ATTENTION_BACKENDS)}"
            )
        return cls(
            cpu_kernels=_switch(CPU_KERNELS_ENV, config.cpu_kernels),
            packed_weights=_switch(PACKED_WEIGHTS_ENV, config.packed_weights),
            onednn_weights=bool(_switch(ONEDNN_WEIGHTS_ENV, config.onednn_weights)),
            step_compiler=_switch(STEP_COMPILER_ENV, config.step_compiler),
            attention_backend=backend,
            huge_pages=bool(_switch(HUGE_PAGES_ENV, config.huge_pages)),
            enforce_eager=config.enforce_eager,
            local_replica=(
                (config.data_parallel_rank, config.data_parallel_size)
                if config.distributed_executor_backend == "mp"
                else (0, 1)
            ),
        )


class Platform(ABC):
    """One kind of device and how pagedllm runs on it; see the module docstring."""

    name: str = "abstract"

    # Backends a user may choose here ("auto" picks `default_attention_backend()`).
    attention_backends: tuple[str, ...] = ("torch", "triton")

    def __init__(self, device: torch.device, options: PlatformOptions):
        self.device = device
        self.options = options
        self._attention: AttentionBackend | None = None

    def select_dtype(self, requested: str) -> torch.dtype:
        """The model dtype: `requested`, or for "auto" the platform's default."""
        if requested != "auto":
            return _DTYPES[requested]
        return self.default_dtype()

    @abstractmethod
    def default_dtype(self) -> torch.dtype:
        """What "auto" means here."""

    def configure_model_process(self, num_ranks: int = 1) -> None:  # noqa: B027 (most need nothing)
        """Set up a process that runs the model (threads, allocator); once, before loading.
        `num_ranks`: how many tensor-parallel ranks share this machine."""

    def place_weights(self, model: torch.nn.Module) -> None:  # noqa: B027 (most need nothing)
        """Once the model is loaded (its weights in their final formats), before anything
        holds on to them: move the weights where this platform's kernels read them fastest."""

    def pin_engine_core_threads(self) -> list[int]:
        """In an engine core process that runs the model itself, once it is loaded: pin its
        threads where that pays; returns the cores the server's threads should keep to (empty:
        nothing pinned, the server's threads stay where they are)."""
        return []

    @abstractmethod
    def available_memory(self) -> int:
        """Bytes free for the KV cache on the device."""

    def kv_cache_budget(self, cache_config: CacheConfig) -> int:
        """Bytes for the whole KV cache: the configured GiB, else the platform's share."""
        if cache_config.kv_cache_memory is not None:
            return int(cache_config.kv_cache_memory * _GiB)
        return self.default_kv_cache_budget(cache_config)

    @abstractmethod
    def default_kv_cache_budget(self, cache_config: CacheConfig) -> int:
        """The budget when the user gave none."""

    def attention_backend(self) -> AttentionBackend:
        """The attention backend every layer binds: the user's choice (`--attention-backend`),
        else the platform's default; built once. Raises `ConfigError` for a backend that cannot
        run here, saying what to use instead."""
        if self._attention is None:
            name = self.options.attention_backend
            if name == "auto":
                name = self.default_attention_backend()
            elif name not in self.attention_backends:
                raise ConfigError(
                    f"attention backend {name!r} does not run on {self.name}; "
                    f"choose one of {', '.join(self.attention_backends)} (or auto)"
                )
            self._attention = self.build_attention_backend(name)
        return self._attention

    @abstractmethod
    def default_attention_backend(self) -> str:
        """What "auto" means here."""

    def build_attention_backend(self, name: str) -> AttentionBackend:
        """A backend of `attention_backends` (platforms add their own)."""
        if name == "triton":
            # Imported here: the Triton backend needs the triton package, the others do not.
            from pagedllm.attention.backends.triton_paged import TritonPagedBackend

            return TritonPagedBackend(self.device)
        return TorchReferenceBackend()

    @abstractmethod
    def layer_ops(self, dtype: torch.dtype) -> LayerOps:
        """The implementations and weight formats the model layers get (see LayerOps)."""

    def sample_kernel(self):
        """The sampler's fused greedy/temperature kernel, or None (torch only)."""
        return None

    def step_compiler(
        self, dtype: torch.dtype, scheduler_config: SchedulerConfig | None = None
    ) -> StepCompiler | None:
        """What compiles whole steps of a loaded model (within the scheduler's limits), or None."""
        return None

    # ---- device memory (platforms that size the KV cache from a measured profile) ----------
    profiles_memory: bool = False

    def record_memory_profile(self, profile) -> None:  # noqa: B027 (only GPU platforms profile)
        """Keep the profile the runner measured; `default_kv_cache_budget` sizes from it."""

    def total_memory(self) -> int:
        """The device's memory in bytes (0 where not tracked)."""
        return 0

    def memory_outside_torch(self) -> int:
        """Device memory in use outside torch's allocator (0 where not tracked)."""
        return 0

    def memory_allocated(self) -> int:
        """Bytes the device's allocator holds for tensors now (0 where not tracked)."""
        return 0

    def reset_peak_memory(self) -> None:  # noqa: B027
        """Start a new peak measurement."""

    def peak_memory_allocated(self) -> int:
        """The allocator's peak since `reset_peak_memory` (0 where not tracked)."""
        return 0

    def synchronize(self) -> None:  # noqa: B027
        """Wait for the device's queued work (start-up measurements and warm-up)."""

    warms_up: bool = False

    def describe(self, dtype: torch.dtype, compiled_step: str | None) -> str:
        """The start-up log line: platform, dtype, attention backend, kernels, packing, step compiler."""
        ops = self.layer_ops(dtype)
        return (
            f"platform {self.name} ({self.device}): dtype {str(dtype).removeprefix('torch.')}, "
            f"attention {self.attention_backend().name}, kernels {self.kernels_label()}, "
            f"weight packing {self.weight_packing_label(ops)}, step compiler {compiled_step or 'off'}"
        )

    def weight_packing_label(self, ops: LayerOps) -> str:
        """How the log names the weight formats float weights take ("off": kept as loaded)."""
        return "off"

    def kernels_label(self) -> str:
        """How the log names this platform's kernels ("off": the pure-torch path)."""
        return "off"

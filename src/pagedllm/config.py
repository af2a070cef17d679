"""Typed engine configuration. The core reads SchedulerConfig and CacheConfig only."""

from __future__ import annotations

from dataclasses import dataclass

# The weight-only quantization methods (model/layers/quantization/); kept here so the config
# module imports no torch.
QUANTIZATION_METHODS = ("none", "int8", "int4", "int4-g128")
# Attention backends a user may force (`auto`: the platform's choice); see platforms/.
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")
# How weights are obtained: from the checkpoint, or random (seeded) for a config alone.
LOAD_FORMATS = ("auto", "dummy")
DISTRIBUTED_EXECUTOR_BACKENDS = ("mp", "ray")
RAY_PLACEMENT_STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")


class ConfigError(ValueError):
    """An engine option is out of range; the message says what is allowed."""


@dataclass
class CacheConfig:
    """Paged KV cache layout."""

    block_size: int = 16
    enable_prefix_caching: bool = True
    # Exactly this many blocks (tests use it to force preemption); overrides the memory budget.
    num_kv_blocks: int | None = None
    # Memory budget for the KV cache in GiB; None: the platform's share (see platforms/).
    kv_cache_memory: float | None = None
    # GPU: the share of device memory for weights, activations and the KV cache together.
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two >= 1, got {self.block_size}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ConfigError(f"kv_cache_memory must be > 0 GiB, got {self.kv_cache_memory}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class SchedulerConfig:
    """Token-budget continuous batching limits."""

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be >= 2, got {self.max_model_len}")


@dataclass
class EngineConfig:
    """Everything `LLM(...)` and the CLI accept."""

    model: str = "smollm2-135m-instruct"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    max_model_len: int | None = None  # None: the model's own context length
    max_num_seqs: int = 128
    max_num_batched_tokens: int | None = None  # None: chosen from max_model_len
    block_size: int = 16
    enable_prefix_caching: bool = True
    kv_cache_memory: float | None = None
    num_kv_blocks: int | None = None
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    tokenizer: str | None = None
    chat_template: str | None = None
    # Weight-only quantization of linear layers and the LM head: None/"none", "int8", "int4" or "int4-g128".
    quantization: str | None = None
    # The platform's fast paths (environment variables override, read once at start-up):
    # compiled CPU kernels (PAGEDLLM_CPU_KERNELS; off = the pure-torch path), bf16 weights packed
    # for the compiled matmul (PAGEDLLM_PACKED_WEIGHTS; None: where the platform finds they pay),
    # the step compiler that runs a whole decoder stack as one call (PAGEDLLM_DECODER_STACK);
    # bf16 weights packed once for oneDNN's matmul instead (PAGEDLLM_ONEDNN_WEIGHTS; opt-in);
    # weights copied into transparent huge pages after loading, on CPU (PAGEDLLM_HUGE_PAGES).
    cpu_kernels: bool = True
    packed_weights: bool | None = None
    onednn_weights: bool = False
    step_compiler: bool = True
    huge_pages: bool = True
    # Which attention backend every layer binds (PAGEDLLM_ATTENTION_BACKEND overrides).
    attention_backend: str = "auto"
    # "dummy": random weights for a config without a checkpoint (a config.json or a shape name).
    load_format: str = "auto"
    # GPU: the share of the device's memory pagedllm may use (weights, activations, KV cache).
    gpu_memory_utilization: float = 0.9
    # GPU: run every step eagerly instead of replaying captured CUDA graphs for decode steps.
    enforce_eager: bool = False
    # Tensor parallelism: the model split over this many ranks (processes) of one group.
    tensor_parallel_size: int = 1
    # How ranks (and, with data_parallel_size > 1, replicas) are started: "mp" (local processes)
    # or "ray" (actors on a Ray cluster the user started; `pip install pagedllm[ray]`).
    distributed_executor_backend: str = "mp"
    # Data parallelism: this many engine cores (replicas, each tensor_parallel_size ranks)
    # behind one front end, which routes each request by load and prefix-cache affinity.
    data_parallel_size: int = 1
    # Which of those replicas this engine core is (the front end sets it per replica).
    data_parallel_rank: int = 0
    # Ray: the cluster to join (None: $RAY_ADDRESS, else the cluster started on this node) and
    # how a replica's ranks are placed on its nodes (a placement group of one bundle per rank).
    ray_address: str | None = None
    ray_placement_strategy: str = "PACK"
    # Admission control (per engine core, so per replica): requests beyond the running seats
    # wait in a queue this long at most (None: unbounded); past a bound a new request is
    # refused (a 429 with Retry-After), as is one that waited longer than max_queue_wait s.
    max_num_queued_requests: int | None = None
    max_num_queued_tokens: int | None = None
    max_queue_wait: float | None = None
    # Engine recovery (an engine core in its own process): a dead core is replaced by a new one
    # up to this many times; a core holding requests that sends nothing for engine_watchdog s
    # is taken for hung and replaced too (None: never). Generous by default: one step of a long
    # CPU prefill takes a while.
    max_engine_restarts: int = 3
    engine_watchdog: float | None = 600.0

    def __post_init__(self) -> None:
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}; "
                f"got {self.attention_backend!r}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_engine_restarts < 0:
            raise ConfigError(f"max_engine_restarts must be >= 0, got {self.max_engine_restarts}")
        for name in ("max_num_queued_requests", "max_num_queued_tokens", "max_queue_wait", "engine_watchdog"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 (or unset: unbounded), got {value}")
        if self.data_parallel_size < 1:
            raise ConfigError(f"data_parallel_size must be >= 1, got {self.data_parallel_size}")
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ConfigError(
                f"data_parallel_rank must be in [0, {self.data_parallel_size}), got {self.data_parallel_rank}"
            )
        if self.ray_placement_strategy not in RAY_PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"ray_placement_strategy must be one of {', '.join(RAY_PLACEMENT_STRATEGIES)}; "
                f"got {self.ray_placement_strategy!r}"
            )
        if self.distributed_executor_backend not in DISTRIBUTED_EXECUTOR_BACKENDS:
            raise ConfigError(
                f"distributed_executor_backend must be one of {', '.join(DISTRIBUTED_EXECUTOR_BACKENDS)}; "
                f"got {self.distributed_executor_backend!r}"
            )
        if self.load_format not in LOAD_FORMATS:
            raise ConfigError(
                f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {self.load_format!r}"
            )
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}")
        if self.quantization not in (None, *QUANTIZATION_METHODS):
            raise ConfigError(
                f"quantization must be one of {', '.join(QUANTIZATION_METHODS)}; got {self.quantization!r}"
            )
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

"""The CUDA platform: our Triton attention kernels, CUDA graphs for decode steps, int8/int4
weights in our Triton matmuls (cuda_layer_ops.py), and a KV cache sized from the GPU's memory
after the weights and a measured activation peak.

bf16 by default (float16 before Ampere). Start-up on a GPU: the runner loads the weights,
measures one dummy step of `max_num_batched_tokens` tokens (and, with graphs, one of
`max_num_seqs` decodes) into a `GpuMemoryProfile`, sizes the KV cache from it
(`gpu_memory.kv_cache_budget`: `--gpu-memory-utilization` of the device less weights,
activations, graphs and memory outside torch), allocates it, captures the decode graphs
(`cuda_graphs.py`; `--enforce-eager`: none) and warms the kernels up before the engine reports
ready.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.model.layers.layer_ops import LayerOps
from pagedllm.platforms.cuda_graphs import CudaGraphStepCompiler
from pagedllm.platforms.cuda_layer_ops import cuda_layer_ops
from pagedllm.platforms.gpu_memory import GpuMemoryProfile, describe, kv_cache_budget
from pagedllm.platforms.interface import Platform

logger = logging.getLogger(__name__)


class CudaPlatform(Platform):
    """See the module docstring."""

    name = "cuda"
    profiles_memory = True
    warms_up = True

    def __init__(self, device, options):
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        super().__init__(device, options)
        self._profile: GpuMemoryProfile | None = None

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def configure_model_process(self, num_ranks: int = 1) -> None:
        torch.cuda.set_device(self.device)

    def available_memory(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def total_memory(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def default_attention_backend(self) -> str:
        return "triton" if importlib.util.find_spec("triton") is not None else "torch"

    def default_kv_cache_budget(self, cache_config: CacheConfig) -> int:
        utilization = cache_config.gpu_memory_utilization
        if self._profile is None:
            raise RuntimeError(
                "the GPU's KV cache is sized from a memory profile the model runner measures first "
                "(ModelRunner.determine_kv_cache_groups); none was recorded"
            )
        budget = kv_cache_budget(self._profile, utilization)
        logger.info(describe(self._profile, utilization, budget))
        return budget

    def layer_ops(self, dtype: torch.dtype) -> LayerOps:
        return cuda_layer_ops(dtype)

    def kernels_label(self) -> str:
        return "triton" if self.attention_backend().name == "triton" else "off (torch reference)"

    def step_compiler(self, dtype: torch.dtype, scheduler_config: SchedulerConfig | None = None):
        if self.options.enforce_eager or scheduler_config is None:
            return None
        return CudaGraphStepCompiler(
            scheduler_config.max_num_seqs, scheduler_config.max_model_len, self.device
        )

    # ---- memory -----------------------------------------------------------------------------
    def record_memory_profile(self, profile: GpuMemoryProfile) -> None:
        self._profile = profile

    def memory_allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_allocated(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def memory_outside_torch(self) -> int:
        """Device memory in use that torch's allocator does not hold (context, libraries)."""
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0, total - free - torch.cuda.memory_reserved(self.device))

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

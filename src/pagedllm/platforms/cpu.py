"""The CPU platform: compiled kernels where they build, the pure-torch path where not.

With the kernels (csrc/, built once per machine; `cpu_kernels` option / PAGEDLLM_CPU_KERNELS)
the layers get the element-wise kernels and, where the build has vector matmul paths
(AVX512-BF16, or AVX2 + FMA: `cpu_kernels.instruction_set()`, PAGEDLLM_CPU_ISA forces the AVX2
build), the skinny bf16 matmul, packed bf16 weights and the compiled 4-bit and int8 formats;
attention runs the paged CPU kernel, the sampler its fused kernel, and Llama-family stacks the
compiled decoder stack. Without them everything is the torch reference, exactly what another
device starts from.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial

import torch

from pagedllm.attention.backends.base import AttentionBackend
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.config import CacheConfig, ConfigError
from pagedllm.model.layers.layer_ops import NATIVE, LayerOps
from pagedllm.model.layers.quantization.int4 import Int4Weight
from pagedllm.model.layers.quantization.int8 import Int8Weight
from pagedllm.ops import cpu_kernels, elementwise, int4_gemv, int8_gemv, sampling
from pagedllm.ops.int4_gemv import GemvInt4Weight
from pagedllm.ops.int8_gemv import GemvInt8Weight
from pagedllm.ops.linear import AMX_SKINNY_MAX_ROWS, SKINNY_MAX_ROWS, skinny_linear_upto
from pagedllm.ops.onednn_linear import onednn_available, pack_for_onednn
from pagedllm.ops.packed_linear import pack_if_packable
from pagedllm.platforms.cpu_huge_pages import move_weights_to_huge_pages, transparent_huge_pages
from pagedllm.platforms.cpu_step_compiler import CpuDecoderStackCompiler
from pagedllm.platforms.cpu_threads import (
    configure_model_threads,
    cpu_has_amx_bf16,
    cpu_has_fast_bf16,
    pin_engine_core_threads,
    replica_cores,
    tune_cpu_allocator,
)
from pagedllm.platforms.interface import Platform

logger = logging.getLogger(__name__)

_GiB = 1 << 30
# Default KV budget: like vLLM-CPU's 4 GiB, never more than half of what is free.
_DEFAULT_KV_BYTES = 4 * _GiB
# Builds whose matmul kernels (gemv_bf16, packed bf16, 4-bit, int8) have vector paths.
_MATMUL_INSTRUCTION_SETS = ("avx512_bf16", "avx2")


def _int4_gemv_or_portable(blocks, dtype: torch.dtype, max_rows: int = int4_gemv.GEMV_MAX_ROWS):
    """The compiled kernel's 4-bit format for bf16 activations (the kernel up to `max_rows`
    rows); the portable one otherwise."""
    if dtype != torch.bfloat16:
        return Int4Weight(blocks, dtype)
    return GemvInt4Weight(blocks.codes, blocks.scale, blocks.zero, max_rows=max_rows)


def _int8_gemv_or_portable(weight: torch.Tensor, max_rows: int = int8_gemv.GEMV_MAX_ROWS):
    """The compiled kernel's int8 format for bf16 activations (K a multiple of 32; the kernel
    up to `max_rows` rows); the portable one otherwise. Both round the weight the same way."""
    portable = Int8Weight.from_float(weight)
    if weight.dtype != torch.bfloat16 or weight.shape[1] % 32:
        return portable
    return GemvInt8Weight(portable.qweight, portable.scale, max_rows=max_rows)


class CpuPlatform(Platform):
    """See the module docstring."""

    name = "cpu"
    attention_backends = ("torch", "cpu", "triton")

    def __init__(self, device, options):
        super().__init__(device, options)
        self._kernels: bool | None = None
        self._layer_ops: dict[torch.dtype, LayerOps] = {}
        # Set by configure_model_process in a process that runs the model.
        self._model_threads = 0
        self._pinnable = False

    @property
    def kernels(self) -> bool:
        """Whether the compiled kernels run (building them on first use)."""
        if self._kernels is None:
            self._kernels = self.options.cpu_kernels and cpu_kernels.available()
        return self._kernels

    def default_dtype(self) -> torch.dtype:
        # bf16 where its matmuls are fast: bf16 units (AVX512-BF16, AMX), or the kernels' AVX2
        # paths, which widen bf16 weights in registers, so decode reads half of float32's bytes.
        vector_kernels = self.kernels and cpu_kernels.instruction_set() in _MATMUL_INSTRUCTION_SETS
        return torch.bfloat16 if cpu_has_fast_bf16() or vector_kernels else torch.float32

    def configure_model_process(self, num_ranks: int = 1) -> None:
        tune_cpu_allocator()
        index, count = self.options.local_replica
        if count > 1:
            # Local replicas get disjoint cores: two thread pools spinning on the same cores
            # slow both far more than halving each one's cores does.
            cores = replica_cores(index, count)
            if cores is not None:
                os.sched_setaffinity(0, cores)
                logger.info("data-parallel replica %d of %d: cores %s", index, count, sorted(cores))
        # Tensor-parallel ranks of one replica share its cores.
        self._model_threads = configure_model_threads(num_ranks)
        self._pinnable = count == 1 and num_ranks == 1
        logger.info("CPU model threads: %d", self._model_threads)

    def place_weights(self, model: torch.nn.Module) -> None:
        # Decode streams every weight once per step: on huge pages, back to back, it streams
        # faster (cpu_huge_pages.py).
        if not (self.options.huge_pages and transparent_huge_pages()):
            return
        start = time.perf_counter()
        moved = move_weights_to_huge_pages(model)
        logger.info(
            "weights in huge pages: %.0f MiB in %.2f s", moved / (1 << 20), time.perf_counter() - start
        )

    def pin_engine_core_threads(self) -> list[int]:
        # One replica, one rank, its threads on every usable core: see cpu_threads.py.
        if not self._pinnable:
            return []
        cores = pin_engine_core_threads(self._model_threads)
        if cores:
            logger.info("engine core: main thread on its own core; server threads on cores %s", cores)
        return cores

    def available_memory(self) -> int:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 8 * _GiB

    def default_kv_cache_budget(self, cache_config: CacheConfig) -> int:
        return min(_DEFAULT_KV_BYTES, self.available_memory() // 2)

    def default_attention_backend(self) -> str:
        return "cpu" if self.kernels else "torch"

    def build_attention_backend(self, name: str) -> AttentionBackend:
        if name != "cpu":
            return super().build_attention_backend(name)
        if not self.kernels:
            raise ConfigError(
                "--attention-backend cpu needs the compiled CPU kernels, which are switched off "
                "(--no-cpu-kernels / PAGEDLLM_CPU_KERNELS=0) or could not be built on this machine; "
                "use --attention-backend torch"
            )
        return CPUPagedBackend()

    def layer_ops(self, dtype: torch.dtype) -> LayerOps:
        if dtype not in self._layer_ops:
            self._layer_ops[dtype] = self._build_layer_ops()
        return self._layer_ops[dtype]

    def _build_layer_ops(self) -> LayerOps:
        if not self.kernels:
            return NATIVE
        # The matmul kernels need a vector build (AVX512-BF16 dot products or AVX2 + FMA).
        bf16 = cpu_kernels.instruction_set() in _MATMUL_INSTRUCTION_SETS
        int4_rows, int8_rows = self._quantized_kernel_max_rows()
        return LayerOps(
            name="cpu",
            dense_linear=skinny_linear_upto(self._skinny_max_rows()) if bf16 else NATIVE.dense_linear,
            pack_float_weight=self._float_weight_format() if bf16 else NATIVE.pack_float_weight,
            int4_weight=partial(_int4_gemv_or_portable, max_rows=int4_rows) if bf16 else None,
            int8_weight=partial(_int8_gemv_or_portable, max_rows=int8_rows) if bf16 else None,
            layer_impls={
                "rms_norm": elementwise.rms_norm,
                "silu_and_mul": elementwise.silu_and_mul,
                "rotary_embedding": elementwise.rotary_embedding,
            },
        )

    def _skinny_max_rows(self) -> int:
        """Rows up to which plain bf16 weights take the skinny kernel: few where oneDNN has AMX."""
        return AMX_SKINNY_MAX_ROWS if cpu_has_amx_bf16() else SKINNY_MAX_ROWS

    def _quantized_kernel_max_rows(self) -> tuple[int, int]:
        """Rows up to which 4-bit and int8 weights take their kernels, beyond which dequantize
        + oneDNN's bf16 matmul: fewer where oneDNN has AMX."""
        if cpu_has_amx_bf16():
            if cpu_kernels.amx_tiles():  # both kernels have a tile path in such a build
                return int4_gemv.AMX_TILE_MAX_ROWS, int8_gemv.AMX_TILE_MAX_ROWS
            return int4_gemv.AMX_GEMV_MAX_ROWS, int8_gemv.AMX_GEMV_MAX_ROWS
        return int4_gemv.GEMV_MAX_ROWS, int8_gemv.GEMV_MAX_ROWS

    def _float_weight_format(self):
        """How bf16 weights are stored once loaded: packed for oneDNN's matmul where the user
        asked (`--onednn-weights`), else packed panels for our bf16 matmul unless the user said
        otherwise, or the CPU has AMX and the loaded build cannot reach it (the AVX2 build): there
        oneDNN's bf16 matmul runs on the tiles, several times the vector panel kernel's rate from
        a few dozen rows on, while plain weights keep decode on the skinny kernel. With the
        native build on an AMX CPU the panels are multiplied on the tiles themselves."""
        if self.options.onednn_weights:
            if not onednn_available():
                raise ConfigError("--onednn-weights needs a torch with oneDNN and bf16 support on this CPU")
            return pack_for_onednn
        packed = self.options.packed_weights
        if packed is None:
            packed = not cpu_has_amx_bf16() or cpu_kernels.amx_tiles()
        return pack_if_packable if packed else NATIVE.pack_float_weight

    def weight_packing_label(self, ops: LayerOps) -> str:
        if ops.pack_float_weight is pack_if_packable:
            return "bf16 panels (AMX tiles)" if cpu_kernels.amx_tiles() else "bf16 panels"
        if ops.pack_float_weight is pack_for_onednn:
            return "oneDNN's layout"
        if self.options.packed_weights is None and hasattr(ops.dense_linear, "skinny_max_rows"):
            return "off (AMX: plain weights for oneDNN)"  # a vector build chose not to pack
        return "off"

    def sample_kernel(self):
        return sampling.sample_tokens if self.kernels else None

    def step_compiler(self, dtype: torch.dtype, scheduler_config=None):
        if not (self.kernels and self.options.step_compiler):
            return None
        dense_linear = self.layer_ops(dtype).dense_linear
        return CpuDecoderStackCompiler(skinny_max_rows=getattr(dense_linear, "skinny_max_rows", 0))

    def kernels_label(self) -> str:
        if not self.kernels:
            return "off (torch reference)"
        return f"compiled ({cpu_kernels.instruction_set()})"

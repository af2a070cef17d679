"""CUDA graphs as the CUDA platform's step compiler: decode steps recorded once, replayed.

A decode step launches a few hundred small kernels whose launch cost, not their work, bounds
small batches on a fast GPU. At start-up, after the KV caches are bound, the model's decode
forward is captured for each batch size of `graph_buckets.capture_sizes` (largest first, all
graphs sharing one memory pool) over the fixed buffers of `decode_graph_inputs`; a step that
holds only decodes copies its inputs in (padding to the captured size) and replays the graph,
one launch. Other steps (prefill chunks, mixed steps, or more decodes than the largest graph)
run the model eagerly. Graphs need an attention backend whose decode path does no host work
that depends on the step (the Triton backend: its per-step plan for a decode batch depends on
the batch size only once contexts are planned at their maximum, which the buffers' metadata
does), so other backends are declined.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.attention import Attention
from pagedllm.platforms.decode_graph_inputs import DecodeGraphInputs
from pagedllm.platforms.graph_buckets import bucket_for, capture_sizes
from pagedllm.platforms.step_compiler import CompiledStep, StepCompiler

logger = logging.getLogger(__name__)

# A recorded step: (replay, output tensor the replay writes).
Recorded = tuple[Callable[[], object], torch.Tensor]
GRAPH_BACKENDS = ("triton",)


class CudaGraphCapture:
    """Records a function as a CUDA graph in a memory pool shared by every graph of the model."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def record(self, step: Callable[[], torch.Tensor]) -> Recorded:
        # One eager run first: Triton compiles its kernels and the BLAS libraries choose their
        # algorithms outside the capture, where neither is allowed.
        step()
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = step()
        return graph.replay, output


class CudaGraphStep(CompiledStep):
    """Replays the captured graph of the smallest size holding a decode-only step."""

    name = "cuda_graphs"

    def __init__(self, inputs: DecodeGraphInputs, recorded: dict[int, Recorded]):
        self.inputs = inputs
        self.recorded = recorded
        self.sizes = sorted(recorded)

    def applies(self, positions: torch.Tensor, md: AttentionMetadata) -> bool:
        return (
            md.num_decodes == md.num_reqs == md.num_actual_tokens == positions.shape[0]
            and bucket_for(md.num_reqs, self.sizes) is not None
            and self.inputs.fits(md)
        )

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        size = bucket_for(md.num_reqs, self.sizes)
        self.inputs.load(input_ids, positions, md, size)
        replay, output = self.recorded[size]
        replay()
        return output[: md.num_reqs]


class CudaGraphStepCompiler(StepCompiler):
    """Captures decode graphs for batch sizes up to `max_num_seqs` (see the module docstring).

    `capture` records one step; CUDA's by default (tests on CPU hand in one that replays by
    running the step again, to check the buffers and padding without a GPU)."""

    name = "cuda_graphs"

    def __init__(self, max_num_seqs: int, max_model_len: int, device, capture=None):
        self.sizes = capture_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        self.device = torch.device(device)
        self.capture = capture

    def compile(self, model: nn.Module) -> CudaGraphStep | None:
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        if not layers or layers[0].backend is None:
            logger.info("CUDA graphs: off (the model has no bound attention layers)")
            return None
        backend = layers[0].backend
        unsafe = sorted(
            {type(m).__name__ for m in model.modules() if not getattr(m, "cuda_graph_safe", True)}
        )
        if unsafe:
            logger.info("CUDA graphs: off (%s do host work each step)", ", ".join(unsafe))
            return None
        if backend.name not in GRAPH_BACKENDS:
            logger.info(
                "CUDA graphs: off (attention backend %s; graphs need %s)", backend.name, GRAPH_BACKENDS
            )
            return None
        block_size = layers[0].kv_cache.shape[3]
        num_groups = max(layer.kv_group for layer in layers) + 1
        max_blocks = -(-self.max_model_len // block_size)
        inputs = DecodeGraphInputs(self.sizes[-1], max_blocks, num_groups, block_size, self.device)
        capture = self.capture or CudaGraphCapture(self.device)
        start = time.perf_counter()
        recorded = {}
        try:
            for size in reversed(self.sizes):  # largest first: smaller graphs reuse its pool memory
                md = inputs.metadata(size, self.max_model_len)
                backend.plan(md)
                recorded[size] = capture.record(
                    lambda size=size, md=md: model(inputs.input_ids[:size], inputs.positions[:size], md)
                )
        except RuntimeError as exc:  # an operation a graph cannot record: serve eagerly instead
            logger.warning("CUDA graphs: off, capturing the decode step failed: %s", exc)
            return None
        logger.info(
            "CUDA graphs: %d decode batch sizes up to %d captured in %.1f s",
            len(self.sizes),
            self.sizes[-1],
            time.perf_counter() - start,
        )
        return CudaGraphStep(inputs, recorded)

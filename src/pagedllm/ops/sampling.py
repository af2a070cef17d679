"""The fused CPU sampling kernel (csrc/sampling.cpp), handed to the sampler by the CPU platform."""

from __future__ import annotations

import torch

from pagedllm.ops.cpu_kernels import op


def sample_tokens(out: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor):
    """One token per row of `logits [R, V]` (bf16, f16 or f32) into `out [R]` int64: the first
    argmax where temperature is 0, else the inverse CDF of softmax(logits / T) at `uniform`."""
    op("sample_tokens")(out, logits, temperature, uniform)

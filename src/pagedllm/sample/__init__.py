"""Sampling: batched logits processing, token choice and logprobs (runs in the worker)."""

from pagedllm.sample.logprobs import compute_token_logprobs, gather_token_logprobs
from pagedllm.sample.metadata import SamplingMetadata, SamplingRow, build_sampling_metadata
from pagedllm.sample.sampler import Sampler, SamplerOutput

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "SamplingRow",
    "build_sampling_metadata",
    "compute_token_logprobs",
    "gather_token_logprobs",
]

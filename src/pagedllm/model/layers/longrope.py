"""Rotary variants of the Phi-3 family: partial rotary and LongRoPE.

Partial rotary rotates only the first `rotary_dim` channels of each head (rotate-half layout
within them) and passes the rest through unchanged.

LongRoPE divides each frequency by a per-frequency factor from one of two lists, `short_factor`
or `long_factor`, and scales cos and sin by an attention factor. transformers picks the list
per forward call: long when max(position) + 1 exceeds `original_max_position_embeddings`, for
every token of the call. Here the choice is made per request per step: the tokens of request r
use the long list when its context length this step (`seq_lens[r]`) exceeds that length. For a
sequence run as transformers runs it (whole prompt in one call, then one token per call) the two
agree, and in both the keys already cached keep the rotation they were computed with. They
differ where the engine splits or reuses work transformers does in one call:
- a prompt longer than the original length prefilled in chunks: chunks ending within it are
  rotated short here (transformers fed the same chunks through its cache does the same);
- a prefix-cache hit reuses keys with the rotation of the request that computed them, so a long
  prompt may attend over short-rotated cached blocks of a shorter one;
- a request preempted after decoding past the original length is recomputed in one step, all
  of it with the long factors.

Both tables live in one cos/sin cache, short rows [0, original_max) then long rows
[original_max, original_max + max_position); `step_positions` offsets a long request's
positions into the long rows once per step, and every layer gathers from there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.model.layers.rotary import RotaryEmbedding, default_inv_freq


class PartialRotaryEmbedding(RotaryEmbedding):
    """Rotates channels [0, rotary_dim) of each head of flat [T, n * head_dim] inputs."""

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, inv_freq: torch.Tensor):
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ValueError(
                f"rotary dimension {rotary_dim} must be even and in 1..{head_dim} (the head size)"
            )
        super().__init__(head_dim, max_position, inv_freq)
        self.rotary_dim = rotary_dim

    def fusion_table(self) -> None:
        # Partial rotation (and LongRoPE's per-request table offset) is not a plain table.
        return None

    def rotate_native(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.rotary_dim == self.head_dim:
            return super().rotate_native(positions, x)
        cos, sin = self._cos_sin(positions, x.dtype)
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim)
        rotated, passed = x.split([self.rotary_dim, self.head_dim - self.rotary_dim], dim=-1)
        x1, x2 = rotated.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, passed], dim=-1).view(shape)


class LongRopeRotaryEmbedding(PartialRotaryEmbedding):
    """LongRoPE with short and long factor tables; see the module docstring for the switch."""

    # Which rows a token reads depends on its request's length, read on the host each step: a
    # captured graph would replay one step's choice for every later step.
    cuda_graph_safe = False

    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        short_factor: list[float],
        long_factor: list[float],
        original_max_position: int,
        attention_factor: float,
    ):
        for name, factors in (("short_factor", short_factor), ("long_factor", long_factor)):
            if len(factors) != rotary_dim // 2:
                raise ValueError(f"longrope {name} has {len(factors)} values, expected {rotary_dim // 2}")
        short = longrope_inv_freq(rotary_dim, base, short_factor)
        super().__init__(head_dim, rotary_dim, original_max_position, short)
        self.original_max_position = original_max_position
        long = longrope_inv_freq(rotary_dim, base, long_factor).to(self.cos_sin_cache.device)
        angles = torch.arange(max_position, dtype=torch.float32, device=long.device)[:, None] * long[None, :]
        long_rows = torch.cat([angles.cos(), angles.sin()], dim=-1)
        self.cos_sin_cache = torch.cat([self.cos_sin_cache, long_rows]) * attention_factor

    def step_positions(self, positions: torch.Tensor, md: AttentionMetadata) -> torch.Tensor:
        """Row of the cos/sin cache per token: its position, plus `original_max` for long requests."""
        long = md.seq_lens_cpu[: md.num_reqs] > self.original_max_position
        if not long.any():
            return positions
        query_lens = np.diff(md.query_start_loc_cpu[: md.num_reqs + 1])
        offsets = np.repeat(long.astype(np.int64) * self.original_max_position, query_lens)
        return positions + torch.from_numpy(offsets).to(positions.device)


def longrope_inv_freq(rotary_dim: int, base: float, factors: list[float]) -> torch.Tensor:
    """1 / (factor_i * base^(2i / d)), in float32 as transformers computes it."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * base**exponents)


def longrope_attention_factor(rope: dict, max_position_embeddings: int) -> float:
    """The configured attention factor, else sqrt(1 + ln(scale) / ln(original length)) for scale > 1."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = rope["original_max_position_embeddings"]
    scale = rope.get("factor") or max_position_embeddings / original
    return 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))


def get_phi3_rope(head_dim: int, max_position: int, rope: dict) -> RotaryEmbedding:
    """Default or LongRoPE rotary, over the first `partial_rotary_factor * head_dim` channels."""
    rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    base = rope["rope_theta"]
    if rope["rope_type"] == "default":
        return PartialRotaryEmbedding(head_dim, rotary_dim, max_position, default_inv_freq(rotary_dim, base))
    if rope["rope_type"] != "longrope":
        raise NotImplementedError(
            f"Phi-3 rope type {rope['rope_type']!r} is not supported (default, longrope)"
        )
    return LongRopeRotaryEmbedding(
        head_dim,
        rotary_dim,
        max_position,
        base,
        rope["short_factor"],
        rope["long_factor"],
        rope["original_max_position_embeddings"],
        longrope_attention_factor(rope, max_position),
    )

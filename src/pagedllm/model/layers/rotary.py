"""Rotary position embedding in Hugging Face's rotate-half layout.

Each head's vector is split into halves (x1, x2) rotated pairwise by angle position * inv_freq[i]:
(x1 cos - x2 sin, x2 cos + x1 sin). cos and sin are computed once in float32 for every position
up to `max_position` and gathered by the step's `positions`; like transformers, they are cast to
the activations' dtype before the rotation.
"""

from __future__ import annotations

import math

import torch

from pagedllm.model.layers.custom_op import CustomOp


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """1 / base^(2i / d) for i < d/2, in float32 exactly as transformers computes it."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim))


def llama3_inv_freq(head_dim: int, base: float, scaling: dict) -> torch.Tensor:
    """Llama 3.1's frequency scaling: long wavelengths divided by `factor`, short ones kept, and a
    smooth interpolation between `original_max_position_embeddings / low_freq_factor` and
    `... / high_freq_factor`."""
    inv_freq = default_inv_freq(head_dim, base)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original_len / low, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < original_len / high) * ~(wavelen > original_len / low)
    return torch.where(is_medium, smoothed, scaled)


def linear_inv_freq(head_dim: int, base: float, scaling: dict) -> torch.Tensor:
    """Position interpolation: every position divided by `factor`."""
    return default_inv_freq(head_dim, base) / scaling["factor"]


_SCALED_INV_FREQ = {"llama3": llama3_inv_freq, "linear": linear_inv_freq}


class RotaryEmbedding(CustomOp):
    """Applies rotary embedding to flat q [T, heads * d] and k [T, kv_heads * d] at `positions`.

    `rotate` is the operation a platform may implement (its reference is `rotate_native`); a
    platform implementation may rotate x in place and return it: callers pass (slices of) the
    projection they just computed and do not read the unrotated values again.
    """

    op_name = "rotary_embedding"
    op_method = "rotate"

    def __init__(self, head_dim: int, max_position: int, inv_freq: torch.Tensor):
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        inv_freq = inv_freq.to(device=torch.get_default_device(), dtype=torch.float32)
        positions = torch.arange(max_position, dtype=torch.float32, device=inv_freq.device)
        angles = positions[:, None] * inv_freq[None, :]
        # Float32 regardless of the model dtype; not part of the checkpoint.
        self.register_buffer(
            "cos_sin_cache", torch.cat([angles.cos(), angles.sin()], dim=-1), persistent=False
        )

        self._cached_positions: torch.Tensor | None = None
        self._cached_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(positions, query), self.rotate(positions, key)

    def rotate(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rotate flat [T, n * head_dim] (q, k, or q and k side by side) at `positions`."""
        return self.rotate_native(positions, x)

    def rotate_native(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self._cos_sin(positions, x.dtype)
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).view(shape)

    def fusion_table(self) -> torch.Tensor | None:
        """The float32 [max_position, head_dim] cos | sin table a step compiler may index by
        position to rotate every channel of each head (see fusion_spec.py)."""
        return self.cos_sin_cache if self.cos_sin_cache.shape[1] == self.head_dim else None

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Every layer of a step passes the same positions tensor: gather and cast once per step.
        if self._cached_positions is not positions or self._cached_cos_sin[0].dtype != dtype:
            cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
            self._cached_cos_sin = (cos[:, None, :].to(dtype), sin[:, None, :].to(dtype))
            self._cached_positions = positions
        return self._cached_cos_sin


def get_rope(
    head_dim: int, max_position: int, base: float, rope_scaling: dict | None = None
) -> RotaryEmbedding:
    """A rotary embedding for transformers-style `rope_parameters` / `rope_scaling` dicts.

    Supports the default rope and the 'llama3' and 'linear' scalings; anything else raises.
    """
    rope_type = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if rope_type == "default":
        inv_freq = default_inv_freq(head_dim, base)
    elif rope_type in _SCALED_INV_FREQ:
        inv_freq = _SCALED_INV_FREQ[rope_type](head_dim, base, rope_scaling)
    else:
        supported = ", ".join(["default", *_SCALED_INV_FREQ])
        raise NotImplementedError(f"rope type {rope_type!r} is not supported (supported: {supported})")
    return RotaryEmbedding(head_dim, max_position, inv_freq)

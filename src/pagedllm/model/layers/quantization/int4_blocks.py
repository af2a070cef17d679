"""4-bit group-quantized weights as a checkpoint holds them, and their collection while loading.

`Int4Blocks` carries a weight (or a slice of one) that a checkpoint already stores in 4-bit
groups along the input dimension, in the convention of torch's int4 kernels:

    w[n, k] = (codes[n, k] - 8) * scale[n, k // g] + zero[n, k // g]      codes in 0..15

GGUF's Q4_1 (w = d * q + m) is this with scale = d and zero = m + 8d; Q4_0 (w = d * (q - 8))
with zero = 0. The linear layers' weight loaders narrow and copy it like a tensor (rows freely;
columns only at group boundaries, otherwise it is dequantized first), into an `Int4Staging`
kept beside the float weight until `process_weights_after_loading` packs it: groups loaded this
way keep their exact codes, without a round trip through float weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class Int4Blocks:
    """codes uint8 [..., K] in 0..15; scale and zero float32 [..., K // group_size]."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group_size: int

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dim(self) -> int:
        return self.codes.dim()

    def can_narrow(self, dim: int, start: int, length: int) -> bool:
        """Rows can always be cut; the last dimension only at group boundaries."""
        last = dim in (-1, self.codes.dim() - 1)
        return not last or (start % self.group_size == 0 and length % self.group_size == 0)

    def narrow(self, dim: int, start: int, length: int) -> Int4Blocks:
        if not self.can_narrow(dim, start, length):
            raise ValueError(
                f"cannot cut 4-bit groups of {self.group_size} at columns {start}..{start + length}"
            )
        if dim in (-1, self.codes.dim() - 1):
            g = self.group_size
            return Int4Blocks(
                self.codes.narrow(dim, start, length),
                self.scale.narrow(dim, start // g, length // g),
                self.zero.narrow(dim, start // g, length // g),
                g,
            )
        return Int4Blocks(
            self.codes.narrow(dim, start, length),
            self.scale.narrow(dim, start, length),
            self.zero.narrow(dim, start, length),
            self.group_size,
        )

    def split(self, sizes: list[int], dim: int = 0) -> list[Int4Blocks]:
        parts, start = [], 0
        for size in sizes:
            parts.append(self.narrow(dim, start, size))
            start += size
        return parts

    def regroup(self, group_size: int) -> Int4Blocks:
        """The same weight in smaller groups (`group_size` dividing this one's): each group's
        scale and zero repeated, exact, for kernels that take only smaller groups."""
        if group_size == self.group_size:
            return self
        if group_size <= 0 or self.group_size % group_size:
            raise ValueError(f"cannot regroup 4-bit groups of {self.group_size} into groups of {group_size}")
        times = self.group_size // group_size
        return Int4Blocks(
            self.codes,
            self.scale.repeat_interleave(times, dim=-1),
            self.zero.repeat_interleave(times, dim=-1),
            group_size,
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [..., K]."""
        *lead, k = self.codes.shape
        grouped = self.codes.reshape(*lead, k // self.group_size, self.group_size).float() - 8.0
        weight = grouped * self.scale.unsqueeze(-1) + self.zero.unsqueeze(-1)
        return weight.reshape(*lead, k).to(dtype)


class Int4Staging:
    """A layer's 4-bit groups received from the checkpoint, until the weights are processed.

    `loaded[n, j]` marks group j of row n as received; other groups come from the float weight.
    """

    def __init__(self, rows: int, cols: int, group_size: int, device: torch.device):
        if cols % group_size:
            raise ValueError(f"input size {cols} is not a multiple of the 4-bit group size {group_size}")
        groups = cols // group_size
        self.group_size = group_size
        # Only groups marked in `loaded` are ever read: no need to clear the rest.
        self.codes = torch.empty(rows, cols, dtype=torch.uint8, device=device)
        self.scale = torch.empty(rows, groups, dtype=torch.float32, device=device)
        self.zero = torch.empty(rows, groups, dtype=torch.float32, device=device)
        self.loaded = torch.zeros(rows, groups, dtype=torch.bool, device=device)

    def accepts(self, blocks: Int4Blocks, dim: int, offset: int) -> bool:
        return blocks.group_size == self.group_size and (dim == 0 or offset % self.group_size == 0)

    def store(self, blocks: Int4Blocks, dim: int, offset: int) -> None:
        """Copy `blocks` to rows (dim 0) or columns (dim 1) starting at `offset`."""
        size = blocks.shape[dim]
        g = self.group_size if dim == 1 else 1
        self.codes.narrow(dim, offset, size).copy_(blocks.codes)
        self.scale.narrow(dim, offset // g, size // g).copy_(blocks.scale)
        self.zero.narrow(dim, offset // g, size // g).copy_(blocks.zero)
        self.loaded.narrow(dim, offset // g, size // g).fill_(True)

    def as_blocks(self) -> Int4Blocks:
        return Int4Blocks(self.codes, self.scale, self.zero, self.group_size)

    def write_into(self, weight: torch.Tensor) -> None:
        """Overwrite the received groups of the float `weight` [rows, cols] with their values."""
        rows, cols = weight.shape
        grouped = weight.view(rows, cols // self.group_size, self.group_size)
        values = self.as_blocks().dequantize(weight.dtype).view_as(grouped)
        grouped.copy_(torch.where(self.loaded.unsqueeze(-1), values, grouped))

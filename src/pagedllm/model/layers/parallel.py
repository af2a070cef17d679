"""Tensor-parallel helpers: how a dimension splits over ranks and the collectives layers call.

With `tp_size == 1` every helper is a no-op, so single-device runs never touch
`torch.distributed`; with more ranks a process group must be initialised by the executor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def divide(total: int, parts: int, what: str = "dimension") -> int:
    """`total / parts`, refusing uneven splits with a message naming the dimension."""
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size ({parts})")
    return total // parts


def all_reduce(tensor: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Sum partial results across ranks (row-parallel outputs, vocab-parallel embeddings)."""
    if tp_size > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather_last_dim(tensor: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Concatenate each rank's slice of the last dimension (vocab-parallel logits)."""
    if tp_size == 1:
        return tensor
    pieces = [torch.empty_like(tensor) for _ in range(tp_size)]
    dist.all_gather(pieces, tensor.contiguous())
    return torch.cat(pieces, dim=-1)


def new_parameter(*shape: int) -> torch.nn.Parameter:
    """An uninitialised frozen parameter on the current default device and dtype (weights are loaded)."""
    return torch.nn.Parameter(torch.empty(*shape), requires_grad=False)

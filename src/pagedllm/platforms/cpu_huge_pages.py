"""Model weights in transparent huge pages, one contiguous arena in the order the layers read them.

A decode step at a few rows streams every weight once, so it runs at the rate memory delivers
them. On 4 KiB pages that stream costs a TLB miss every 4 KiB (a two-level walk in a virtual
machine) and the hardware prefetchers stop at every page boundary; the loader's tensors are
also scattered over the heap, so the stream breaks between matmuls. Copied once into one
anonymous mapping advised `MADV_HUGEPAGE` (Linux's transparent huge pages, which most
distributions grant on request: `enabled` set to `madvise` or `always`), the weights lie on
2 MiB pages, back to back in module order (benchmarks/README.md, "Weights in huge pages").

The KV cache stays where torch puts it: on huge pages, 8 sequences decoding at 4000 tokens of
context read it no faster (a fresh pool hands out a sequence's blocks mostly in order).

Only tensors that own their storage whole are moved (a view into a larger tensor keeps its
place), and only those of at least `MIN_BYTES`: norms and small tables gain nothing.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE_BYTES = 2 << 20
MIN_BYTES = 64 << 10
_ALIGN = 256  # each tensor's start: whole cache lines, as torch's allocator gives
_THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_huge_pages() -> bool:
    """Whether this kernel hands out transparent huge pages to memory advised to take them."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = _THP_ENABLED.read_text()
    except OSError:
        return False
    return "[never]" not in setting


class HugePageArena:
    """One anonymous mapping of `nbytes`, 2 MiB-aligned and advised MADV_HUGEPAGE, handed out in
    order as tensors. The mapping lives as long as any tensor taken from it."""

    def __init__(self, nbytes: int):
        self._map = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._map.madvise(mmap.MADV_HUGEPAGE)
        whole = torch.frombuffer(self._map, dtype=torch.uint8)
        start = -whole.data_ptr() % HUGE_PAGE_BYTES
        self._bytes = whole[start : start + nbytes]
        self._used = 0

    @staticmethod
    def span(nbytes: int) -> int:
        """Bytes one tensor of `nbytes` takes in an arena (its start aligned)."""
        return -(-nbytes // _ALIGN) * _ALIGN

    def copy_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor in the arena's next free bytes, equal to `tensor`."""
        nbytes = tensor.nbytes
        if self._used + nbytes > self._bytes.numel():
            raise ValueError(
                f"huge-page arena full: {nbytes} bytes asked, {self._bytes.numel() - self._used} left"
            )
        out = self._bytes[self._used : self._used + nbytes].view(tensor.dtype).view(tensor.shape)
        self._used += self.span(nbytes)
        return out.copy_(tensor)


def _movable(tensor: torch.Tensor | None) -> bool:
    if tensor is None or tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_mkldnn:
        return False  # (oneDNN's packed weights are opaque: no storage to copy)
    return (
        tensor.nbytes >= MIN_BYTES
        and tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nbytes
    )


def move_weights_to_huge_pages(model: nn.Module) -> int:
    """Copy `model`'s large parameters and buffers into one huge-page arena, in module order,
    each tensor shared between modules (tied weights) copied once; returns the bytes moved.
    Each original is released as soon as its copy is in place, so the move needs the model's
    size once plus one tensor's, not twice the model's."""
    # Every slot (a module's parameter or buffer table, and the name in it) per movable tensor,
    # the tensors in first-seen order (dicts keep insertion order).
    slots: dict[int, list[tuple[dict, str]]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if _movable(tensor):
                    tensors.setdefault(id(tensor), tensor)
                    slots.setdefault(id(tensor), []).append((table, name))
    if not tensors:
        return 0
    arena = HugePageArena(sum(HugePageArena.span(t.nbytes) for t in tensors.values()))
    moved = 0
    for key in list(tensors):
        tensor = tensors.pop(key)
        copy = arena.copy_of(tensor)
        if isinstance(tensor, nn.Parameter):
            # In place: every module that holds this Parameter sees the new storage.
            tensor.data = copy
        else:
            for table, name in slots[key]:
                table[name] = copy
        moved += copy.nbytes
        del tensor, copy
    return moved

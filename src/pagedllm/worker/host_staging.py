"""Pinned host buffers a step's inputs are built in, copied to the GPU without blocking.

A copy from ordinary (pageable) host memory makes the CPU wait while the driver stages it; from
pinned memory the copy is queued and the CPU goes on preparing. Each step's arrays are packed
into one pinned arena (bump allocation, 64-byte aligned). Two arenas alternate between steps:
a step fills one while copies queued from the other may still be in flight, and before an arena
is refilled the copies queued from it (two steps earlier) are waited for through the event
recorded after them. An arena too small for a step is replaced by a larger one, after that wait.
"""

from __future__ import annotations

import numpy as np
import torch

_ALIGN = 64
_INITIAL_BYTES = 1 << 20


class HostStaging:
    """See the module docstring. `pin`: pinned memory (False only where no GPU is present)."""

    def __init__(self, device: torch.device, pin: bool = True, num_arenas: int = 2):
        self.device = device
        self.pin = pin
        self._arenas = [self._allocate(_INITIAL_BYTES) for _ in range(num_arenas)]
        self._events: list[torch.cuda.Event | None] = [None] * num_arenas
        self._current = num_arenas - 1
        self._offset = 0

    def _allocate(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    @property
    def arena(self) -> torch.Tensor:
        """The arena the current step fills."""
        return self._arenas[self._current]

    def begin_step(self, nbytes_hint: int = 0) -> None:
        """Switch to the other arena once the copies queued from it have finished."""
        self._current = (self._current + 1) % len(self._arenas)
        event = self._events[self._current]
        if event is not None:
            event.synchronize()
            self._events[self._current] = None
        if nbytes_hint > self.arena.numel():
            self._arenas[self._current] = self._allocate(_grown(nbytes_hint))
        self._offset = 0

    def to_device(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """`array` converted to `dtype` in the arena, and its copy on the device (queued)."""
        nbytes = array.size * dtype.itemsize
        start = -(-self._offset // _ALIGN) * _ALIGN
        if start + nbytes > self.arena.numel():
            # Too small for this step: earlier slices of this arena are already queued, so a
            # new arena takes the rest of the step (the old one lives until its copies finish).
            self._wait_for_queued_copies()
            self._arenas[self._current] = self._allocate(_grown(start + nbytes))
        host = self.arena[start : start + nbytes].view(dtype).view(array.shape)
        host.copy_(torch.from_numpy(array))
        self._offset = start + nbytes
        return host.to(self.device, non_blocking=self.pin)

    def end_step(self) -> None:
        """Mark the end of this step's copies (what `begin_step` waits for two steps later)."""
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self._events[self._current] = event

    def _wait_for_queued_copies(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def _grown(nbytes: int) -> int:
    return 1 << max(nbytes - 1, 1).bit_length()

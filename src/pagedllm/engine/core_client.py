"""EngineCoreClient: the one way a front end reaches its engine core, wherever the core runs.

Two implementations share the interface: `InprocClient` (the core in this process, stepped by
whoever receives) and `MultiprocClient` (`pagedllm.engine.mp_client`: the core in a process of
its own, over a pipe). Either way the front end sends requests and aborts, which the core
applies between steps, and receives one `EngineCoreOutputs` per step. The client is the one
place that notices a core has died: `get_outputs` raises `EngineDeadError`.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod

from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest
from pagedllm.engine.engine_core import EngineCore


class EngineDeadError(RuntimeError):
    """The engine core stopped (it failed, or its process died); no request can be served."""


class EngineCoreClient(ABC):
    """Requests and aborts in, per-step outputs back; `info` holds the core's limits."""

    info: EngineCoreInfo | None

    def wait_ready(self) -> EngineCoreInfo:
        """Block until the core has loaded its model and sized its cache; its limits."""
        return self.info

    @abstractmethod
    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """Queue requests (any thread); the core takes them before its next step."""

    @abstractmethod
    def abort_requests(self, request_ids: list[str]) -> None:
        """Finish requests before the core's next step (any thread; unknown ids are ignored)."""

    @abstractmethod
    def request_snapshot(self) -> list[int]:
        """Ask every core for a `SchedulerSnapshot` (any thread); it arrives in a later
        `EngineCoreOutputs.snapshots`. Returns the replicas asked (those alive)."""

    @abstractmethod
    def get_outputs(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        """The next step's outputs, or None if none came within `timeout` seconds (None: wait).

        Called from one thread only (the front end's receive path). Raises `EngineDeadError`
        once the core cannot produce outputs any more.
        """

    @property
    @abstractmethod
    def is_alive(self) -> bool: ...

    def replica_states(self) -> list | None:
        """Per replica, for a client in front of several cores (`DataParallelClient`); None here."""
        return None

    @abstractmethod
    def shutdown(self) -> None:
        """Stop the core and release what it holds; idempotent."""


class InprocClient(EngineCoreClient):
    """The core in this process: `get_outputs` applies queued inputs and runs one step.

    Whoever calls `get_outputs` drives the core: the offline `LLM`'s loop, or the receive thread
    of a server started with `--no-engine-process` (torch releases the GIL inside its kernels,
    so the event loop keeps serving while a step runs).
    """

    def __init__(self, core: EngineCore):
        self.core = core
        self.info = core.info
        self._inputs: queue.SimpleQueue = queue.SimpleQueue()
        self._dead: BaseException | None = None
        self._shut_down = False

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        self._inputs.put(("add", requests))

    def abort_requests(self, request_ids: list[str]) -> None:
        self._inputs.put(("abort", request_ids))

    def request_snapshot(self) -> list[int]:
        self._inputs.put(("snapshot", None))
        return [0]

    def get_outputs(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine core failed: {self._dead!r}")
        try:
            idle = not self.core.has_unfinished_requests()
            applied, rejected, snapshot_wanted = self._apply_inputs(wait=timeout if idle else 0.0)
            if self.core.has_unfinished_requests():
                outputs = self.core.step()
                outputs.rejected.extend(rejected)
            elif applied:
                # Nothing left to step: still report refusals and the scheduler's new state.
                outputs = EngineCoreOutputs(rejected=rejected, stats=self.core.scheduler.make_stats())
            else:
                return None
            if snapshot_wanted:
                outputs.snapshots.append(self.core.snapshot())
            return outputs
        except Exception as exc:
            self._dead = exc
            raise EngineDeadError(f"the engine core failed: {exc!r}") from exc

    def _apply_inputs(self, wait: float | None) -> tuple[bool, list, bool]:
        """Apply every queued input in order, first waiting up to `wait` s for one if none is;
        returns whether any input was applied, the refused requests, and whether a snapshot
        was asked for."""
        applied, rejected, snapshot_wanted = False, [], False
        try:
            item = self._inputs.get(timeout=wait) if wait != 0.0 else self._inputs.get_nowait()
        except queue.Empty:
            return applied, rejected, snapshot_wanted
        while True:
            applied = applied or item[0] != "wake"
            kind, payload = item
            if kind == "add":
                rejected.extend(self.core.add_requests(payload))
            elif kind == "abort":
                self.core.abort_requests(payload)
            elif kind == "snapshot":
                snapshot_wanted = True
            # "wake" (from shutdown) only ends the wait.
            try:
                item = self._inputs.get_nowait()
            except queue.Empty:
                return applied, rejected, snapshot_wanted

    @property
    def is_alive(self) -> bool:
        return self._dead is None and not self._shut_down

    def shutdown(self) -> None:
        self._shut_down = True
        self._inputs.put(("wake", None))
        self.core.shutdown()

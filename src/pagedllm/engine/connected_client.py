"""ConnectedCoreClient: an engine core reached over a `multiprocessing.connection.Connection`.

The pipe to a local core process (`MultiprocClient`) and the socket to a core running as a Ray
actor on another node (`RayReplicaClient`) carry the same messages (`pagedllm.engine.wire`);
this class holds everything about talking over one. Subclasses say how the core was started,
how to tell its exit status, and how to stop it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from abc import abstractmethod

from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError
from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest
from pagedllm.engine.wire import (
    AbortRequests,
    AddRequests,
    Failed,
    Outputs,
    RequestSnapshot,
    Shutdown,
    client_codec,
    expect_ready,
)

logger = logging.getLogger(__name__)


class ConnectedCoreClient(EngineCoreClient):
    """See the module docstring. `name`: how logs and errors call this core."""

    def __init__(self, name: str):
        self.name = name
        self._conn = None  # set by the subclass once the core is reachable
        self._send_codec = client_codec()
        self._receive_codec = client_codec()
        self._send_lock = threading.Lock()
        self._dead: str | None = None
        self._shut_down = False
        self.info: EngineCoreInfo | None = None

    @property
    def connection(self):
        """The core's end of the connection, for waiting on several at once."""
        return self._conn

    @property
    def pid(self) -> int | None:
        """The core's process id on its node (None if unknown)."""
        return None

    @abstractmethod
    def _exit_description(self) -> str:
        """How the core's process ended ("exit code 1", "actor died: ..."), for messages."""

    @abstractmethod
    def _core_running(self) -> bool:
        """Whether the core's process still runs, as far as this side can tell cheaply."""

    @abstractmethod
    def _stop_core(self) -> None:
        """After `Shutdown` was sent: wait a while for the core to stop, then force it."""

    @abstractmethod
    def kill(self) -> None:
        """Stop the core's process at once (a hung core); its connection then closes."""

    def _connect(self) -> None:
        """Make `self._conn` usable (a subclass whose core connects back waits here)."""

    def wait_ready(self) -> EngineCoreInfo:
        """Wait for the core's `Ready`; raises RuntimeError (or EngineConfigError) if it failed."""
        if self.info is not None:
            return self.info
        try:
            self._connect()
            message = self._receive_codec.decode(self._conn.recv_bytes())
        except (EOFError, OSError):
            message = Failed(f"the {self.name} process ended ({self._exit_description()}) while starting")
        except BaseException:
            self.shutdown()
            raise
        try:
            self.info = expect_ready(message)
        except RuntimeError:
            self.shutdown()
            raise
        return self.info

    # ---- sending (any thread) -----------------------------------------------------------------
    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        if not self._send(AddRequests(requests)):
            raise EngineDeadError(self._dead_message())

    def abort_requests(self, request_ids: list[str]) -> None:
        self._send(AbortRequests(request_ids))  # a dead core holds nothing left to free

    def request_snapshot(self) -> list[int]:
        return [0] if self._send(RequestSnapshot()) else []

    def _send(self, message) -> bool:
        with self._send_lock:
            if self._dead is not None or self._shut_down or self._conn is None:
                return False
            try:
                self._conn.send_bytes(self._send_codec.encode(message))
            except (OSError, ValueError):  # a broken pipe, or a connection already closed
                return False
        return True

    # ---- receiving (one thread) ---------------------------------------------------------------
    def get_outputs(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        if self._dead is not None:
            raise EngineDeadError(self._dead_message())
        try:
            if timeout is not None and not self._conn.poll(timeout):
                return None
            message = self._receive_codec.decode(self._conn.recv_bytes())
        except (EOFError, OSError) as exc:
            self._dead = f"the {self.name} process died ({self._exit_description()})"
            raise EngineDeadError(self._dead_message()) from exc
        if isinstance(message, Outputs):
            return message.outputs
        self._dead = message.message if isinstance(message, Failed) else f"unexpected {message!r}"
        raise EngineDeadError(self._dead_message())

    def _dead_message(self) -> str:
        return f"the {self.name} stopped: {self._dead or 'it was shut down'}"

    @property
    def is_alive(self) -> bool:
        return self._dead is None and not self._shut_down and self._core_running()

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._send(Shutdown())
        self._shut_down = True
        self._stop_core()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()

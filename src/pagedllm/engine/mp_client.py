"""MultiprocClient: the engine core in a process of its own, reached over a pipe.

The front end (HTTP, tokenization, detokenization) and the core (scheduling, the model) then
run side by side instead of taking turns, and a step never waits for the event loop. Messages
are `pagedllm.engine.wire`'s: token ids and small structs, no pickled outputs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading

from pagedllm.config import EngineConfig
from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError
from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest
from pagedllm.engine.core_process import run_engine_core_process
from pagedllm.engine.wire import (
    AbortRequests,
    AddRequests,
    Failed,
    Outputs,
    Shutdown,
    client_codec,
    expect_ready,
)

logger = logging.getLogger(__name__)


class MultiprocClient(EngineCoreClient):
    """Starts the core's process at construction; `wait_ready` blocks until its model is loaded."""

    def __init__(self, config: EngineConfig, log_level: int | None = None, name: str = "engine core"):
        """`name`: how logs and errors call this core ("engine replica 1" behind a router)."""
        self.name = name
        if log_level is None:
            log_level = logging.getLogger().getEffectiveLevel()
        # spawn, not fork: the parent may hold threads, and a CUDA context never survives a fork.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=run_engine_core_process,
            args=(config, child_conn, log_level),
            name="pagedllm-" + name.replace(" ", "-"),
            daemon=True,
        )
        self._process.start()
        child_conn.close()  # so that the core's death reads as end-of-file here
        logger.info("%s process started (pid %d)", name, self._process.pid)
        self._send_codec = client_codec()
        self._receive_codec = client_codec()
        self._send_lock = threading.Lock()
        self._dead: str | None = None
        self._shut_down = False
        self.info: EngineCoreInfo | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def connection(self):
        """The core's end of the pipe, for `multiprocessing.connection.wait` over several cores."""
        return self._conn

    def wait_ready(self) -> EngineCoreInfo:
        """Wait for the core's `Ready`; raises RuntimeError if it failed to start."""
        if self.info is not None:
            return self.info
        try:
            message = self._receive_codec.decode(self._conn.recv_bytes())
        except (EOFError, OSError):
            message = Failed(f"the {self.name} process exited with code {self._exit_code()} while starting")
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

    def _send(self, message) -> bool:
        with self._send_lock:
            if self._dead is not None or self._shut_down:
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
            self._dead = f"the {self.name} process died (exit code {self._exit_code()})"
            raise EngineDeadError(self._dead_message()) from exc
        if isinstance(message, Outputs):
            return message.outputs
        self._dead = message.message if isinstance(message, Failed) else f"unexpected {message!r}"
        raise EngineDeadError(self._dead_message())

    def _dead_message(self) -> str:
        return f"the {self.name} stopped: {self._dead or 'it was shut down'}"

    def _exit_code(self) -> int | None:
        self._process.join(timeout=1.0)
        return self._process.exitcode

    @property
    def is_alive(self) -> bool:
        return self._dead is None and not self._shut_down and self._process.is_alive()

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._send(Shutdown())
        self._shut_down = True
        self._process.join(timeout=10)
        if self._process.is_alive():
            logger.warning("the %s process did not stop within 10 s; killing it", self.name)
            self._process.kill()
            self._process.join(timeout=5)
        with contextlib.suppress(OSError):
            self._conn.close()

"""MultiprocClient: the engine core in a process of its own, reached over a pipe.

The front end (HTTP, tokenization, detokenization) and the core (scheduling, the model) then
run side by side instead of taking turns, and a step never waits for the event loop. Messages
are `pagedllm.engine.wire`'s: token ids and small structs, no pickled outputs.
"""

from __future__ import annotations

import logging
import multiprocessing

from pagedllm.config import EngineConfig
from pagedllm.engine.connected_client import ConnectedCoreClient
from pagedllm.engine.core_process import run_engine_core_process
from pagedllm.platforms import unpinned_cores

logger = logging.getLogger(__name__)


class MultiprocClient(ConnectedCoreClient):
    """Starts the core's process at construction; `wait_ready` blocks until its model is loaded.

    `name`: how logs and errors call this core ("engine replica 1" behind a router)."""

    def __init__(self, config: EngineConfig, log_level: int | None = None, name: str = "engine core"):
        super().__init__(name)
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
        # A server that pinned its threads (platforms.pin_frontend_threads) starts a core, a
        # restarted one too, on every core it had, for the core to lay its threads out anew.
        with unpinned_cores():
            self._process.start()
        child_conn.close()  # so that the core's death reads as end-of-file here
        logger.info("%s process started (pid %d)", name, self._process.pid)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _exit_description(self) -> str:
        self._process.join(timeout=1.0)
        return f"exit code {self._process.exitcode}"

    def kill(self) -> None:
        self._process.kill()

    def _core_running(self) -> bool:
        return self._process.is_alive()

    def _stop_core(self) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            logger.warning("the %s process did not stop within 10 s; killing it", self.name)
            self._process.kill()
            self._process.join(timeout=5)

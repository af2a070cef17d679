"""Graceful shutdown: on SIGTERM or SIGINT the server drains before it stops.

uvicorn, left to itself, closes its listening socket at the first signal, gives open requests
a few seconds, then cuts them, and re-raises the signal after shutting down (a traceback for
SIGINT, a killed-by-signal exit status for SIGTERM). Instead, the first signal starts a drain:

- `/ready` answers 503 at once (load balancers stop sending), `/health` stays 200 (the process
  is alive and must not be restarted), and a new API request on an open connection gets a 503
  saying the server is shutting down (`DrainGate`);
- requests in flight run to their end, for up to `--shutdown-timeout` seconds; those still
  running then end with a clear `server_shutting_down` error (an error event for a stream);
- then uvicorn stops as usual (the listening socket closes, idle connections too), the engine
  is shut down, and the process exits 0.

A second signal stops at once. The engine core and tensor-parallel workers ignore SIGINT (a
terminal's Ctrl-C reaches the whole process group) but not SIGTERM: a service manager should
signal the server alone (systemd: `KillMode=mixed`; Kubernetes and Docker signal PID 1 only).
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from pagedllm.entrypoints.openai.errors import OpenAIError, ServerShuttingDownError

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
# Paths a draining server still answers: probes, scrapes, the version.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics", "/version"})


class DrainGate:
    """While the server drains, a 503 for every request but the probes (plain ASGI)."""

    def __init__(self, app, ctx):
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.ctx.draining and scope["path"] not in PROBE_PATHS:
            error = OpenAIError(
                503, "the server is shutting down; retry elsewhere", code="server_shutting_down"
            )
            response = error.response()
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in place of its own signal handling."""

    def __init__(self, config: uvicorn.Config, ctx, shutdown_timeout: float):
        super().__init__(config)
        self.ctx = ctx
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    exit_code = 0

    async def on_tick(self, counter: int) -> bool:
        # An engine dead for good (its restarts spent): exit non-zero, so that a supervisor
        # (systemd, Kubernetes) starts the server afresh, rather than answer 503s forever.
        if self.ctx.llm.dead_error is not None and not self.ctx.draining:
            logger.error("the engine is dead and no restart is left: exiting with status 1")
            self.exit_code = 1
            return True
        return await super().on_tick(counter)

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        # Not uvicorn's: it would record the signal and raise it again after shutting down.
        if self.ctx.draining or self._loop is None:
            logger.warning("second signal: stopping now")
            self.should_exit = self.force_exit = True
            return
        self.ctx.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        llm = self.ctx.llm
        logger.info(
            "shutting down: not ready any more; %d request(s) in flight get up to %g s to finish",
            llm.num_in_flight,
            self.shutdown_timeout,
        )
        deadline = time.monotonic() + self.shutdown_timeout
        while llm.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if llm.num_in_flight:
            logger.warning(
                "shutdown timeout (%g s): ending %d request(s) still in flight",
                self.shutdown_timeout,
                llm.num_in_flight,
            )
            llm.abort_all(
                ServerShuttingDownError(
                    f"the server shut down before this request finished (--shutdown-timeout {self.shutdown_timeout:g} s)"
                )
            )
            # Let the streams write their error events before the connections close.
            while llm.num_in_flight and time.monotonic() < deadline + 5:
                await asyncio.sleep(0.05)
        logger.info("drained; stopping")
        self.should_exit = True

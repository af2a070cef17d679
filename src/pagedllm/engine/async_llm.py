"""AsyncLLM: the engine loop on a background thread, one async output stream per request.

The HTTP event loop never waits for a model step: it tokenizes and validates on its own
thread, then hands the request to the engine thread through a command queue; outputs come
back with `call_soon_threadsafe`. Torch releases the GIL inside its kernels, so the event
loop keeps serving while a step runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pagedllm.config import EngineConfig
from pagedllm.engine.input_processor import PromptType
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.metrics import EngineMetrics
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped on an error; requests cannot be served any more."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLM:
    """Serve many concurrent requests from async code (the HTTP server)."""

    def __init__(self, config: EngineConfig, engine: LLMEngine | None = None, model_name: str | None = None):
        self.engine = engine or LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        # Prometheus metrics (labelled with the served model name) and the periodic log line.
        self.metrics = EngineMetrics(model_name or self.engine.config.model)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._stopped = threading.Event()
        self.dead_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pagedllm-engine", daemon=True)
        self._thread.start()

    # ---- public API (event-loop side) ------------------------------------------------------------
    async def generate(
        self,
        prompt: PromptType,
        params: SamplingParams,
        request_id: str,
        output_kind: str = "delta",
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield outputs as the engine produces them; closing the iterator early aborts the request."""
        self._check_alive()
        processed = self.engine.process_request(
            request_id, prompt, params, time.time(), output_kind=output_kind, cache_salt=cache_salt
        )
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._streams_lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        self._commands.put(("add", processed))
        finished = False
        try:
            # Checked again once registered: an engine that died in between never fails this stream.
            self._check_alive()
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._streams_lock:
                self._streams.pop(request_id, None)
            if not finished:
                # The client went away (or the caller stopped iterating): free its blocks now.
                self._commands.put(("abort", request_id))

    def abort(self, request_id: str) -> None:
        """Abort from any thread; unknown or finished ids are ignored."""
        self._commands.put(("abort", request_id))

    def stats(self) -> dict:
        """A snapshot of scheduler state for metrics and health (safe from any thread)."""
        return self.engine.scheduler.make_stats().__dict__ | {
            "num_preemptions": self.engine.scheduler.num_preemptions
        }

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.dead_error is None

    def shutdown(self) -> None:
        self._stopped.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout=10)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.dead_error!r}")

    # ---- engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stopped.is_set():
                self._drain_commands(block=not engine.has_unfinished_requests())
                if engine.has_unfinished_requests():
                    self._deliver(engine.step())
                self.metrics.log_if_due()
        except BaseException as exc:  # surface to every waiting stream, then stop
            logger.exception("engine loop failed")
            self.dead_error = exc
            self._fail_all(exc)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, kind: str, payload) -> None:
        if kind == "add":
            try:
                self.engine.add_processed_request(payload)
            except ValueError as exc:
                self._send(payload.request_id, exc)
        elif kind == "abort":
            # Aborts produce no output: count the sequences they ended for the metrics here.
            before = self.engine.get_num_unfinished_requests()
            self.engine.abort_request(payload)
            self.metrics.record_abort(payload, before - self.engine.get_num_unfinished_requests())
            self.metrics.record_scheduler_stats(self.engine.scheduler.make_stats())

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            self._send(output.request_id, output)
        self.metrics.record_step(self.engine.scheduler.make_stats(), outputs)

    def _send(self, request_id: str, item) -> None:
        with self._streams_lock:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _fail_all(self, exc: BaseException) -> None:
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, EngineDeadError(str(exc)))

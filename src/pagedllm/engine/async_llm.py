"""AsyncLLM: one async output stream per request over an engine loop that never blocks HTTP.

The event loop tokenizes and validates on its own thread, then hands the request to the engine
loop as a command; results come back with `call_soon_threadsafe`. The loop runs either on a
background thread of this process (torch releases the GIL inside its kernels, so the event
loop keeps serving while a step runs) or in a separate engine process (`engine_process=True`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pagedllm.config import EngineConfig
from pagedllm.engine.engine_loop import EngineLoop, StepResult
from pagedllm.engine.input_processor import InvalidRequestError, PromptType
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.metrics import EngineMetrics
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an error; requests cannot be served any more."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


def _put_all(batch: list[tuple[asyncio.Queue, object]]) -> None:
    for stream_queue, item in batch:
        stream_queue.put_nowait(item)


class AsyncLLM:
    """Serve many concurrent requests from async code (the HTTP server)."""

    def __init__(
        self,
        config: EngineConfig,
        engine: LLMEngine | None = None,
        model_name: str | None = None,
        engine_process: bool = False,
    ):
        self.engine_process = engine_process
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._stopped = threading.Event()
        self.dead_error: BaseException | None = None
        if engine_process:
            from pagedllm.engine.engine_process import start_engine_process
            from pagedllm.platforms import configure_frontend_threads

            # The front end needs the tokenizer and limits only; the model loads in the child.
            configure_frontend_threads()
            self.engine = LLMEngine(config, frontend_only=True)
            self._process, self._conn, self.engine.num_kv_blocks = start_engine_process(
                config, logging.getLogger().getEffectiveLevel()
            )
            self._send_lock = threading.Lock()
            target = self._receive_results
        else:
            self.engine = engine or LLMEngine(config)
            self._commands: queue.SimpleQueue = queue.SimpleQueue()
            target = self._run_loop
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        # Prometheus metrics (labelled with the served model name) and the periodic log line.
        self.metrics = EngineMetrics(model_name or self.engine.config.model)
        self._last_stats = None
        self._thread = threading.Thread(target=target, name="pagedllm-engine", daemon=True)
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
        self._submit("add", processed)
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
                self._submit("abort", request_id)

    def abort(self, request_id: str) -> None:
        """Abort from any thread; unknown or finished ids are ignored."""
        self._submit("abort", request_id)

    def stats(self):
        """The scheduler's state after the latest step (None before the first)."""
        return self._last_stats

    @property
    def is_running(self) -> bool:
        alive = self._thread.is_alive()
        if self.engine_process:
            alive = alive and self._process.is_alive()
        return alive and self.dead_error is None

    def shutdown(self) -> None:
        self._stopped.set()
        if self.engine_process:
            with contextlib.suppress(OSError, ValueError):  # the pipe may already be gone
                self._submit("shutdown", None)
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        else:
            self._commands.put(("wake", None))
        self._thread.join(timeout=10)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.dead_error!r}")

    def _submit(self, kind: str, payload) -> None:
        if self.engine_process:
            with self._send_lock:
                self._conn.send((kind, payload))
        else:
            self._commands.put((kind, payload))

    # ---- engine side --------------------------------------------------------------------------
    def _run_loop(self) -> None:
        """Thread mode: drive the engine here."""
        try:
            EngineLoop(self.engine, self._commands, self._on_result).run(self._stopped)
        except BaseException as exc:  # surface to every waiting stream, then stop
            logger.exception("engine loop failed")
            self._die(exc)

    def _receive_results(self) -> None:
        """Process mode: relay what the engine process sends."""
        try:
            while not self._stopped.is_set():
                message = self._conn.recv()
                if isinstance(message, StepResult):
                    self._on_result(message)
                elif message[0] == "failed":
                    self._die(RuntimeError(message[1]))
                    return
        except (EOFError, OSError) as exc:
            if not self._stopped.is_set():
                self._die(exc)
        except Exception as exc:  # a bug on this side: fail every stream rather than leave them hanging
            logger.exception("relaying engine results failed")
            self._die(exc)

    def _on_result(self, result: StepResult) -> None:
        deliveries: list[tuple[str, RequestOutput | BaseException]] = [
            (request_id, InvalidRequestError(param, message))
            for request_id, param, message in result.rejected
        ]
        deliveries.extend((output.request_id, output) for output in result.outputs)
        self._deliver(deliveries)
        # Aborts produce no output: count the sequences they ended here.
        for request_id, num_sequences in result.aborted:
            self.metrics.record_abort(request_id, num_sequences)
        self._last_stats = result.stats
        self.metrics.record_step(result.stats, result.outputs)
        self.metrics.log_if_due()

    def _deliver(self, deliveries: list[tuple[str, RequestOutput | BaseException]]) -> None:
        # One wake-up per event loop for the whole step, not one per request: each
        # call_soon_threadsafe writes to the loop's self-pipe, and at 32 streams per step that
        # was a tenth of the server's CPU time, taken from the cores the model runs on.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        with self._streams_lock:
            for request_id, item in deliveries:
                stream = self._streams.get(request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream.queue, item))
        for loop, batch in batches.items():
            loop.call_soon_threadsafe(_put_all, batch)

    def _die(self, exc: BaseException) -> None:
        self.dead_error = exc
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, EngineDeadError(str(exc)))

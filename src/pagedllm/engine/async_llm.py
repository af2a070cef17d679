"""AsyncLLM: one async output stream per request, over an `LLMEngine` front end.

The event loop tokenizes and validates on its own thread and hands the request to the core
through the engine's client. One receive thread takes every step's outputs from the client,
turns them into request outputs and wakes the streams with `call_soon_threadsafe`. The core runs
in a process of its own (`engine_process=True`, the server's default) or in this one, driven by
that same receive thread (`engine_process=False`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator

from pagedllm.config import ConfigError, EngineConfig
from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError, InprocClient
from pagedllm.engine.input_processor import EngineOverloadedError, PromptType
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.engine.snapshot_board import SnapshotBoard
from pagedllm.metrics import EngineMetrics
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_output.grammar_compiler import DEFAULT_TIMEOUT_S as GRAMMAR_TIMEOUT_S
from pagedllm.structured_outputs_params import StructuredOutputsError

logger = logging.getLogger(__name__)

__all__ = ["AsyncLLM", "EngineDeadError"]

# How long the receive thread waits for a step before checking whether it should stop.
_RECEIVE_TIMEOUT_S = 0.5


class _Stream:
    """One request's outputs on their way to its event loop: filled by `put` on that loop,
    emptied by `get`. Leaner than asyncio.Queue (no size bound, one waiter), as every token
    of every stream passes here."""

    __slots__ = ("loop", "_items", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


def _put_all(batch: list[tuple[_Stream, object]]) -> None:
    for stream, item in batch:
        stream.put(item)


def make_client(config: EngineConfig, engine_process: bool) -> EngineCoreClient:
    """The core in a process of its own (started now, loading while the caller goes on; with
    `data_parallel_size` > 1, one per replica), replaced when it dies or hangs; or here."""
    if engine_process:
        from pagedllm.engine.dp_client import DataParallelClient
        from pagedllm.platforms import configure_frontend_threads

        # The front end keeps one torch thread; the cores belong to the cores' processes.
        configure_frontend_threads()
        return DataParallelClient(
            config, max_restarts=config.max_engine_restarts, watchdog_s=config.engine_watchdog
        )
    if config.data_parallel_size > 1:
        raise ConfigError(
            "--data-parallel-size runs each replica in a process of its own; drop --no-engine-process"
        )
    from pagedllm.engine.engine_core import EngineCore

    return InprocClient(EngineCore(config))


class AsyncLLM:
    """Serve many concurrent requests from async code (the HTTP server)."""

    def __init__(
        self,
        config: EngineConfig,
        model_name: str | None = None,
        engine_process: bool = False,
        pin_threads: bool = False,
    ):
        """`pin_threads`: a process that serves and does nothing else (`pagedllm serve`) keeps
        its threads to the cores its engine core left it, if the core pinned its own."""
        self.engine_process = engine_process
        self.engine = LLMEngine(config, make_client(config, engine_process))
        if pin_threads and engine_process and self.engine.info.frontend_cores:
            from pagedllm.platforms import pin_frontend_threads

            # Before the receive thread starts, which then inherits the cores.
            pin_frontend_threads(self.engine.info.frontend_cores)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._stopped = threading.Event()
        self.dead_error: BaseException | None = None
        # Prometheus metrics (labelled with the served model name) and the periodic log line;
        # recorded from the receive thread and, for aborts, from the event loop.
        self.metrics = EngineMetrics(model_name or config.model)
        self.metrics.watch_grammar_compiler(self.engine.grammar_compiler)
        if self.replica_states() is not None:
            self.metrics.watch_replicas(self.replica_states)
        self._metrics_lock = threading.Lock()
        self._last_stats = None
        self._snapshots = SnapshotBoard(self.engine.client.request_snapshot)
        self._thread = threading.Thread(target=self._receive_loop, name="pagedllm-receive", daemon=True)
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
        if params.structured_outputs is not None:
            # Compile on the compiler's pool, not the event loop; bounded, so a pathological
            # regex is a 400 before the response starts.
            compiler = self.engine.grammar_compiler
            future = compiler.submit(params.structured_outputs)
            try:
                # Shielded: a timeout must not cancel the compile other requests may share.
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), GRAMMAR_TIMEOUT_S)
            except TimeoutError:
                raise StructuredOutputsError(
                    f"compiling the {params.structured_outputs.kind} constraint took longer than "
                    f"{GRAMMAR_TIMEOUT_S:g} s; simplify it"
                ) from None
        stream = _Stream(asyncio.get_running_loop())
        with self._streams_lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        finished = False
        try:
            self.engine.add_request(
                request_id,
                prompt,
                params,
                time.time(),
                output_kind=output_kind,
                cache_salt=cache_salt,
                constraint_compiled=params.structured_outputs is not None,
            )
            # Checked again once registered: an engine that died in between never fails this stream.
            self._check_alive()
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    # A dead engine has forgotten it already; one ended from here (abort_all)
                    # is still running in the core: the `finally` aborts it there.
                    finished = isinstance(item, EngineDeadError)
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
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort from any thread; unknown or finished ids are ignored."""
        num_sequences = self.engine.abort_request(request_id)
        with self._metrics_lock:
            # Aborts produce no output: count the sequences they ended here.
            self.metrics.record_abort(request_id, num_sequences)

    @property
    def num_in_flight(self) -> int:
        """Requests being served now (streamed or not)."""
        with self._streams_lock:
            return len(self._streams)

    def abort_all(self, error: BaseException) -> None:
        """End every request in flight with `error` (each stream raises it; as it closes, its
        request is aborted in the engine, which frees its blocks)."""
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.loop.call_soon_threadsafe(stream.put, error)

    def stats(self):
        """The scheduler's state after the latest step (None before the first)."""
        return self._last_stats

    async def engine_snapshots(self, timeout: float = 2.0):
        """Each replica's `SchedulerSnapshot`, fresh from its core (the latest known for a core
        that did not answer within `timeout` s), ordered by replica."""
        return await self._snapshots.fresh(timeout)

    def history_since(self, after: float | None) -> list:
        """The metrics history's samples newer than `after` (wall clock; None: all kept)."""
        with self._metrics_lock:
            return self.metrics.history.since(after)

    def metric_totals(self):
        """A copy of the running totals (tokens, first tokens, finished and aborted sequences)."""
        with self._metrics_lock:
            return dataclasses.replace(self.metrics.totals)

    def replica_states(self):
        """Per data-parallel replica: liveness, load and counters (None with a single core)."""
        return self.engine.client.replica_states()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.engine.client.is_alive and self.dead_error is None

    def shutdown(self) -> None:
        self._stopped.set()
        self.engine.shutdown()
        self._thread.join(timeout=10)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.dead_error}")

    # ---- the receive thread -------------------------------------------------------------------
    def _receive_loop(self) -> None:
        """The one receive path: the core's outputs, whatever client brings them, to the streams."""
        try:
            while not self._stopped.is_set():
                step = self.engine.receive(_RECEIVE_TIMEOUT_S)
                if step is None:
                    with self._metrics_lock:
                        self.metrics.sample_history()
                    continue
                # Metrics first: whoever sees a token finds it already counted.
                with self._metrics_lock:
                    self._last_stats = step.stats
                    self.metrics.record_step(step.stats, step.request_outputs)
                    for request_id, error in step.errors:
                        self.metrics.record_abort(request_id, 0)  # refused or lost: tracked no more
                        if isinstance(error, EngineOverloadedError):
                            self.metrics.record_rejection(error.param)
                    self.metrics.log_if_due()
                    self.metrics.sample_history()
                if step.snapshots:
                    self._snapshots.post(step.snapshots)
                deliveries: list[tuple[str, RequestOutput | BaseException]] = list(step.errors)
                deliveries.extend((output.request_id, output) for output in step.request_outputs)
                self._deliver(deliveries)
        except EngineDeadError as exc:
            if not self._stopped.is_set():
                logger.error("%s", exc)
                self._die(exc)
        except BaseException as exc:  # a bug on this side: fail every stream rather than leave them hanging
            logger.exception("receiving engine outputs failed")
            self._die(exc)

    def _deliver(self, deliveries: list[tuple[str, RequestOutput | BaseException]]) -> None:
        # One wake-up per event loop for the whole step, not one per request: each
        # call_soon_threadsafe writes to the loop's self-pipe, and at 32 streams per step that
        # was a tenth of the server's CPU time, taken from the cores the model runs on.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, object]]] = {}
        with self._streams_lock:
            for request_id, item in deliveries:
                stream = self._streams.get(request_id)
                if stream is not None:
                    batches.setdefault(stream.loop, []).append((stream, item))
        for loop, batch in batches.items():
            loop.call_soon_threadsafe(_put_all, batch)

    def _die(self, exc: BaseException) -> None:
        self.dead_error = exc
        with self._streams_lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.loop.call_soon_threadsafe(stream.put, EngineDeadError(str(exc)))

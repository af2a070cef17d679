"""The loop that drives an LLMEngine for a server: apply queued commands, step, report.

It runs on a background thread of the server process, or alone in an engine process; either
way its results leave as `StepResult`s through one callback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pagedllm.core.scheduler import SchedulerStats
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.outputs import RequestOutput


@dataclass
class StepResult:
    """What one turn of the loop produced (plain data: it may cross a process boundary)."""

    outputs: list[RequestOutput]
    stats: SchedulerStats
    # (request id, number of sequences it ended) for each abort applied this turn.
    aborted: list[tuple[str, int]] = field(default_factory=list)
    # (request id, offending parameter, message) for each request the engine refused.
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


class EngineLoop:
    """Commands in (`("add", ProcessedRequest)`, `("abort", request_id)`), StepResults out."""

    def __init__(self, engine: LLMEngine, commands: queue.SimpleQueue, emit: Callable[[StepResult], None]):
        self.engine = engine
        self.commands = commands
        self.emit = emit

    def run(self, stopped: threading.Event) -> None:
        engine = self.engine
        while not stopped.is_set():
            result = StepResult([], None)
            self._drain(result, block=not engine.has_unfinished_requests())
            if engine.has_unfinished_requests():
                result.outputs = engine.step()
            if result.outputs or result.aborted or result.rejected:
                result.stats = engine.scheduler.make_stats()
                self.emit(result)

    def _drain(self, result: StepResult, block: bool) -> None:
        try:
            command = self.commands.get(timeout=1.0) if block else self.commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(result, *command)
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, result: StepResult, kind: str, payload) -> None:
        engine = self.engine
        if kind == "add":
            try:
                engine.add_processed_request(payload)
            except ValueError as exc:
                result.rejected.append((payload.request_id, getattr(exc, "param", "prompt"), str(exc)))
        elif kind == "abort":
            before = engine.get_num_unfinished_requests()
            engine.abort_request(payload)
            result.aborted.append((payload, before - engine.get_num_unfinished_requests()))

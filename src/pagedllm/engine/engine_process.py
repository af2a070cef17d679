"""Runs the engine loop in its own process; the server process keeps HTTP and tokenization.

Messages over one duplex pipe. Server -> engine: ("add", ProcessedRequest), ("abort", id),
("shutdown", None). Engine -> server: ("ready", num_kv_blocks) once, then StepResults, or
("failed", message) if the engine could not start or its loop died.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from multiprocessing.connection import Connection

from pagedllm.config import EngineConfig

logger = logging.getLogger(__name__)


def start_engine_process(
    config: EngineConfig, log_level: int
) -> tuple[multiprocessing.Process, Connection, int]:
    """Start the process and wait until its model is loaded; returns (process, pipe, num_kv_blocks)."""
    parent_conn, child_conn = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_main, args=(config, child_conn, log_level), name="pagedllm-engine", daemon=True
    )
    process.start()
    child_conn.close()
    kind, payload = parent_conn.recv()
    if kind != "ready":
        process.join(timeout=5)
        raise RuntimeError(f"the engine process failed to start: {payload}")
    return process, parent_conn, payload


def _main(config: EngineConfig, conn: Connection, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pagedllm.engine.engine_loop import EngineLoop
    from pagedllm.engine.llm_engine import LLMEngine

    try:
        engine = LLMEngine(config)
    except Exception as exc:
        conn.send(("failed", repr(exc)))
        return
    conn.send(("ready", engine.num_kv_blocks))
    commands: queue.SimpleQueue = queue.SimpleQueue()
    stopped = threading.Event()
    threading.Thread(target=_receive, args=(conn, commands, stopped), daemon=True).start()
    send_lock = threading.Lock()

    def emit(result) -> None:
        with send_lock:
            conn.send(result)

    try:
        EngineLoop(engine, commands, emit).run(stopped)
    except Exception as exc:
        logger.exception("engine loop failed")
        with send_lock:
            conn.send(("failed", repr(exc)))


def _receive(conn: Connection, commands: queue.SimpleQueue, stopped: threading.Event) -> None:
    """Forward pipe messages to the loop's command queue until shutdown or a closed pipe."""
    try:
        while True:
            kind, payload = conn.recv()
            if kind == "shutdown":
                break
            commands.put((kind, payload))
    except (EOFError, OSError):
        pass
    stopped.set()
    commands.put(("wake", None))

"""The engine core's own process: reads client messages, steps, writes outputs.

A reader thread decodes what arrives over the connection into a queue, so the core's loop
never waits on the pipe while it has work; the loop applies every queued message between steps
(an abort therefore wastes at most the step already running) and sends one `Outputs` per step.
The connection is any `multiprocessing.connection.Connection`: a pipe to the parent here, a
socket for a core on another machine.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from multiprocessing.connection import Connection

from pagedllm.config import EngineConfig
from pagedllm.engine.core_messages import EngineCoreOutputs
from pagedllm.engine.startup_gc import freeze_startup_objects
from pagedllm.engine.wire import (
    SCHEMA_VERSION,
    AbortRequests,
    AddRequests,
    Failed,
    Outputs,
    Ready,
    RequestSnapshot,
    Shutdown,
    core_codec,
)

logger = logging.getLogger(__name__)

_STOP = object()  # queued by the reader when the client asked to shut down or went away


def ignore_interrupts() -> None:
    """Ctrl-C reaches a terminal's whole process group: the core ignores it, and the front end
    drains, then stops the core (Shutdown, or its pipe closing). SIGTERM keeps its default:
    whoever sends it to this process itself (multiprocessing at exit, an operator) means it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_engine_core_process(config: EngineConfig, conn: Connection, log_level: int) -> None:
    """The process's entry point: load the core, announce it, serve until shut down."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ignore_interrupts()
    from pagedllm.engine.engine_core import EngineCore

    codec = core_codec()
    try:
        core = EngineCore(config)
    except ValueError as exc:
        # A refused option or model: one line here, the message in the front end's error.
        logger.error("the engine core refused its configuration: %s", exc)
        conn.send_bytes(codec.encode(Failed(str(exc), invalid_config=True)))
        return
    except Exception as exc:
        logger.exception("the engine core failed to start")
        conn.send_bytes(codec.encode(Failed(repr(exc))))
        return
    loop = EngineCoreLoop(core, conn)
    # After the reader thread started, so that it is pinned with the model's other threads.
    core.info.frontend_cores = core.pin_threads()
    freeze_startup_objects()
    conn.send_bytes(codec.encode(Ready(SCHEMA_VERSION, core.info)))
    try:
        loop.run()
    except Exception as exc:
        logger.exception("the engine core failed")
        # The client may be gone already; then there is no one left to tell.
        with contextlib.suppress(OSError):
            conn.send_bytes(codec.encode(Failed(repr(exc))))
        raise SystemExit(1) from exc
    finally:
        core.shutdown()


class EngineCoreLoop:
    """Messages in, one step at a time, outputs out, until `Shutdown` or a closed connection."""

    def __init__(self, core, conn: Connection):
        self.core = core
        self.conn = conn
        self.codec = core_codec()
        self.inputs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, name="pagedllm-core-reader", daemon=True).start()

    def _read(self) -> None:
        codec = core_codec()  # the loop's codec encodes on the other thread
        try:
            while True:
                message = codec.decode(self.conn.recv_bytes())
                if isinstance(message, Shutdown):
                    break
                self.inputs.put(message)
        except (EOFError, OSError):
            pass  # the client went away: stop as if asked to
        except Exception:
            logger.exception("reading a client message failed")
        self.inputs.put(_STOP)

    def run(self) -> None:
        core = self.core
        while True:
            # Idle: sleep until a message arrives. Busy: take what has arrived, then step.
            messages = [] if core.has_unfinished_requests() else [self.inputs.get()]
            messages.extend(self._drain())
            rejected = []
            snapshot_wanted = False
            for message in messages:
                if message is _STOP:
                    return
                if isinstance(message, AddRequests):
                    rejected.extend(core.add_requests(message.requests))
                elif isinstance(message, AbortRequests):
                    core.abort_requests(message.request_ids)
                elif isinstance(message, RequestSnapshot):
                    snapshot_wanted = True
            if core.has_unfinished_requests():
                outputs = core.step()
                outputs.rejected.extend(rejected)
            elif messages:
                # Nothing left to step (an abort emptied the queue, or every add was refused):
                # the client still learns of refusals and of the scheduler's new state.
                outputs = EngineCoreOutputs(rejected=rejected, stats=core.scheduler.make_stats())
            else:
                continue
            if snapshot_wanted:
                # Taken after the step, so it shows what the outputs it travels with left behind.
                outputs.snapshots.append(core.snapshot())
            self.conn.send_bytes(self.codec.encode(Outputs(outputs)))

    def _drain(self) -> list:
        messages = []
        while True:
            try:
                messages.append(self.inputs.get_nowait())
            except queue.Empty:
                return messages

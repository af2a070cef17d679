"""Tensor parallelism over local processes: rank 0 here, ranks 1..N-1 spawned (`--tensor-parallel-size`).

The engine core's process is rank 0: it owns the scheduler, and each call (`execute_model`
with the step's `SchedulerOutput`) becomes one broadcast to the workers (tp_worker.py) before
rank 0 runs the same step on its own shard. The group is gloo on CPU, NCCL on GPUs, on
127.0.0.1. A worker that dies breaks the next collective, which raises here: the engine core
fails and its clients see the engine dead (nothing waits forever; a peer that stops without
closing its sockets times out after `tp_group.COLLECTIVE_TIMEOUT`).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import subprocess
import sys
import threading

from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.platforms import Platform
from pagedllm.structured_output.grammar_transfer import GrammarSender
from pagedllm.worker.executor import Executor
from pagedllm.worker.tp_group import broadcast_command, destroy_tp_group, free_port, init_tp_group
from pagedllm.worker.tp_worker import (
    DETERMINE,
    EXECUTE,
    INITIALIZE,
    SHUTDOWN,
    RunnerSpec,
    WorkerArgs,
    build_runner,
    check_shardable,
    determine_agreed_groups,
    with_grammars,
)

logger = logging.getLogger(__name__)


class MultiprocExecutor(Executor):
    """See the module docstring."""

    def __init__(self, spec: RunnerSpec, platform: Platform):
        """`platform`: rank 0's (the engine core's); each worker resolves its own."""
        check_shardable(spec.model_config, spec.tp_size)
        self.spec = spec
        self._shut_down = False
        self._grammars = GrammarSender()
        port = free_port()
        log_level = logging.getLogger("pagedllm").getEffectiveLevel()
        # Plain subprocesses rather than multiprocessing children: the engine core itself may
        # run in a daemonic process, which multiprocessing does not let have children.
        self.workers = [
            subprocess.Popen([sys.executable, "-m", "pagedllm.worker.tp_worker"], stdin=subprocess.PIPE)
            for _ in range(1, spec.tp_size)
        ]
        for rank, worker in enumerate(self.workers, start=1):
            worker.stdin.write(pickle.dumps(WorkerArgs(rank, spec, port, platform.device.type, log_level)))
            worker.stdin.close()
        logger.info(
            "tensor parallelism: %d ranks (workers pid %s)",
            spec.tp_size,
            ", ".join(str(w.pid) for w in self.workers),
        )
        try:
            init_tp_group(0, spec.tp_size, port, platform.device)
            self.runner = build_runner(spec, 0, platform)
        except BaseException:
            self._stop_workers()
            destroy_tp_group()
            raise
        for rank, worker in enumerate(self.workers, start=1):
            threading.Thread(
                target=self._watch, args=(rank, worker), name=f"pagedllm-tp-watch-{rank}", daemon=True
            ).start()

    def _watch(self, rank: int, worker: subprocess.Popen) -> None:
        """Log a worker's death (the collective it breaks raises in the engine core)."""
        code = worker.wait()
        if not self._shut_down:
            logger.error(
                "tensor-parallel worker rank %d (pid %d) died with exit code %s", rank, worker.pid, code
            )

    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]:
        broadcast_command((DETERMINE, None))
        return determine_agreed_groups(self.runner)

    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None:
        broadcast_command((INITIALIZE, groups))
        self.runner.initialize_kv_cache(groups)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        broadcast_command((EXECUTE, with_grammars(scheduler_output, self._grammars.pack)))
        return self.runner.execute_model(scheduler_output)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        if all(w.poll() is None for w in self.workers):
            # A worker that went away meanwhile fails the broadcast: stopping the rest is all left.
            with contextlib.suppress(RuntimeError):
                broadcast_command((SHUTDOWN, None))
        self._stop_workers()
        destroy_tp_group()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=5)

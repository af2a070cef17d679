"""Executors hide where the model runner lives (this process today; workers later)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.worker.model_runner import ModelRunner


class Executor(ABC):
    """Runs scheduled steps on one or more model runners."""

    @abstractmethod
    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]: ...

    @abstractmethod
    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None: ...

    @abstractmethod
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput: ...

    def shutdown(self) -> None:  # noqa: B027 (an executor in this process holds nothing to stop)
        """Stop any processes the executor started; idempotent."""


class UniProcExecutor(Executor):
    """The model runner in the engine's own process: no copies, no IPC."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]:
        return self.runner.determine_kv_cache_groups()

    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None:
        self.runner.initialize_kv_cache(groups)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.runner.execute_model(scheduler_output)

"""EngineCore: the scheduler and the executor behind one `step()`, nothing textual.

The core takes `EngineCoreRequest`s (token ids and sampling parameters) and answers each step
with `EngineCoreOutputs` (new token ids, logprobs, finish reasons, the scheduler's counters).
Tokenizing, detokenizing and stop strings belong to the front end (`LLMEngine`), which reaches
the core through an `EngineCoreClient`: in its own process, or in another. The core is the unit
later work replicates (data parallel) and places (on other machines).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures

from pagedllm.config import CacheConfig, EngineConfig, SchedulerConfig
from pagedllm.core.admission import AdmissionControl
from pagedllm.core.kv_cache_spec import request_capacity_blocks
from pagedllm.core.scheduler import Scheduler
from pagedllm.core.snapshot import SchedulerSnapshot, take_snapshot
from pagedllm.engine.core_messages import (
    EngineCoreInfo,
    EngineCoreOutputs,
    EngineCoreRequest,
    RejectedRequest,
)
from pagedllm.engine.tokenizer import load_tokenizer, tokenizer_model
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.platforms import resolve_platform
from pagedllm.request import Request, RequestStatus
from pagedllm.structured_output.grammar_compiler import GrammarCompiler, shared_grammar_compiler
from pagedllm.worker.executor import Executor, UniProcExecutor
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.mp_executor import MultiprocExecutor
from pagedllm.worker.ray_cluster import connect_ray
from pagedllm.worker.ray_executor import RayExecutor
from pagedllm.worker.tp_worker import RunnerSpec

logger = logging.getLogger(__name__)

# The offline token budget per step when none is configured (the server sets its own).
DEFAULT_BATCHED_TOKENS = 2048


def resolve_max_model_len(config: EngineConfig, model_config: ModelConfig) -> int:
    """The configured context length, checked against the model's own."""
    limit = model_config.max_position_embeddings
    if config.max_model_len is None:
        return limit
    if config.max_model_len > limit:
        raise ValueError(f"max_model_len={config.max_model_len} exceeds the model's context length {limit}")
    return config.max_model_len


class EngineCore:
    """Loads the model, sizes the KV cache, and runs one scheduled batch per `step()`."""

    def __init__(self, config: EngineConfig):
        start = time.perf_counter()
        self.config = config
        resolved = self.resolved = resolve_model(config.model, load_format=config.load_format)
        self.model_config = ModelConfig.from_resolved(resolved, quantization=config.quantization)
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS,
            max_model_len=resolve_max_model_len(config, self.model_config),
        )
        self.cache_config = CacheConfig(
            block_size=config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            num_kv_blocks=config.num_kv_blocks,
            kv_cache_memory=config.kv_cache_memory,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        if config.distributed_executor_backend == "ray":
            # Every rank, even a single one, is an actor, so a replica's model can live on any
            # node; this process holds the scheduler only and may lack the ranks' device (a
            # replica's core runs in a CPU-only actor), so rank 0 resolves the platform's dtype.
            connect_ray(config.ray_address)
            self.platform = None
            self.executor: Executor = RayExecutor(self._runner_spec(None))
            self.device, self.dtype = self.executor.device, self.executor.spec.dtype
        else:
            self.platform = resolve_platform(config)
            # Built before the weights load, so a backend that cannot run here is refused at once.
            self.platform.attention_backend()
            self.device = self.platform.device
            self.dtype = self.platform.select_dtype(config.dtype)
            if config.tensor_parallel_size > 1:
                self.executor = MultiprocExecutor(self._runner_spec(self.dtype), self.platform)
            else:
                runner = ModelRunner(
                    self.model_config,
                    self.scheduler_config,
                    self.cache_config,
                    self.platform,
                    self.dtype,
                    config.seed,
                )
                self.executor = UniProcExecutor(runner)
        try:
            # One block pool per KV-cache group (layers grouped by sliding window).
            self.kv_cache_groups = self.executor.determine_kv_cache_groups()
            self.executor.initialize_kv_cache(self.kv_cache_groups)
        except BaseException:
            self.executor.shutdown()
            raise
        self.scheduler = Scheduler(self.scheduler_config, self.cache_config, self.kv_cache_groups)
        self.num_steps = 0
        # Requests whose grammar is still compiling (constrained decoding).
        self._compiling: dict[str, Request] = {}
        self.admission = AdmissionControl(
            config.max_num_queued_requests, config.max_num_queued_tokens, config.max_queue_wait
        )
        self.info = EngineCoreInfo(
            max_model_len=self.scheduler_config.max_model_len,
            # The longest request every group can hold (its full-attention pool's size).
            num_kv_blocks=request_capacity_blocks(
                self.kv_cache_groups,
                config.block_size,
                self.scheduler_config.max_num_batched_tokens,
                self.scheduler_config.max_model_len,
            ),
            block_size=config.block_size,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )
        logger.info(
            "engine core ready in %.1f s: %s on %s (%s), KV cache %d blocks x %d tokens = %d tokens",
            time.perf_counter() - start,
            self.model_config.architecture,
            self.info.device,
            self.info.dtype,
            self.info.num_kv_blocks,
            self.info.block_size,
            self.info.kv_capacity_tokens,
        )

    def _runner_spec(self, dtype) -> RunnerSpec:
        """What each tensor-parallel rank builds its runner from (`dtype` None: rank 0 decides)."""
        return RunnerSpec(
            self.config,
            self.model_config,
            self.scheduler_config,
            self.cache_config,
            dtype,
            self.config.tensor_parallel_size,
        )

    # ---- requests -----------------------------------------------------------------------------
    def add_requests(self, requests: list[EngineCoreRequest]) -> list[RejectedRequest]:
        """Queue requests; those the scheduler refuses come back, the others are queued.

        `requests` is one user request's samples (what a front end sends at a time): a full
        queue refuses them together."""
        if self.admission.enabled:
            refusal = self.admission.refusal(self.scheduler, [len(r.prompt_token_ids) for r in requests])
            if refusal is not None:
                return [RejectedRequest(r.request_id, "queue_full", refusal, status=429) for r in requests]
        rejected = []
        for core_request in requests:
            leader = None
            if core_request.prefix_leader_id is not None:
                leader = self.scheduler.requests.get(core_request.prefix_leader_id)
            request = Request(
                request_id=core_request.request_id,
                prompt_token_ids=core_request.prompt_token_ids,
                sampling_params=core_request.sampling_params,
                eos_token_id=self.model_config.eos_token_id,
                arrival_time=core_request.arrival_time,
                cache_salt=core_request.cache_salt,
                prefix_leader=leader,
            )
            try:
                self.scheduler.add_request(request)
            except ValueError as exc:
                param = getattr(exc, "param", "prompt")
                rejected.append(RejectedRequest(core_request.request_id, param, str(exc)))
                continue
            self.admission.queued(request.request_id)
            constraint = core_request.sampling_params.structured_outputs
            if constraint is not None:
                # Compiled off the step's path; the scheduler admits the request once it is done.
                request.grammar = self.grammar_compiler.submit(constraint, count=False)
                self._compiling[request.request_id] = request
        return rejected

    @property
    def grammar_compiler(self) -> GrammarCompiler:
        """The process's compiler for this model (shared with an in-process front end)."""
        model_config = self.model_config
        # Keyed as the front end keys it, so an in-process pair shares one compiler.
        return shared_grammar_compiler(
            (str(self.resolved.path), self.config.tokenizer, model_config.vocab_size),
            lambda: GrammarCompiler(
                lambda: load_tokenizer(tokenizer_model(self.config, self.resolved)),
                model_config.vocab_size,
                list(model_config.eos_token_ids),
            ),
        )

    def _settle_grammars(self) -> list[RejectedRequest]:
        """Forget compiled grammars' requests; refuse those whose grammar failed to compile."""
        rejected = []
        for request_id, request in list(self._compiling.items()):
            if request.is_finished:
                del self._compiling[request_id]
            elif request.grammar.done():
                del self._compiling[request_id]
                error = request.grammar.exception()
                if error is not None:
                    self.scheduler.finish_requests(request_id, RequestStatus.FINISHED_ABORTED)
                    param = getattr(error, "param", "structured_outputs")
                    rejected.append(RejectedRequest(request_id, param, str(error)))
        return rejected

    def _refuse_expired(self) -> list[RejectedRequest]:
        """Requests that waited longer than --max-queue-wait without a seat: refused (429)."""
        expired = self.admission.expired(self.scheduler)
        if not expired:
            return []
        self.scheduler.finish_requests([r.request_id for r in expired], RequestStatus.FINISHED_ABORTED)
        message = (
            f"the request waited more than {self.admission.max_wait:g} s for a seat "
            "(--max-queue-wait); the engine is overloaded, retry later"
        )
        return [RejectedRequest(r.request_id, "queue_timeout", message, status=429) for r in expired]

    def abort_requests(self, request_ids: list[str]) -> None:
        """Finish requests now and free their blocks (unknown or finished ids are ignored)."""
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def snapshot(self) -> SchedulerSnapshot:
        """The scheduler's block pools and requests now, for the web console (between steps)."""
        return take_snapshot(self.scheduler, self.config.data_parallel_rank, self.num_steps)

    # ---- the step -----------------------------------------------------------------------------
    def pin_threads(self) -> list[int]:
        """Pin this process's threads where the platform finds it pays (a core process of its
        own, once loaded); returns the cores the server's threads should keep to (or [])."""
        if self.platform is None or self.config.tensor_parallel_size > 1:
            return []
        return self.platform.pin_engine_core_threads()

    def shutdown(self) -> None:
        """Stop the executor's processes (tensor-parallel workers); idempotent."""
        self.executor.shutdown()

    def step(self) -> EngineCoreOutputs:
        """Schedule, run the model once, and report what each request gained."""
        rejected = self._settle_grammars() if self._compiling else []
        if self.admission.max_wait is not None:
            rejected.extend(self._refuse_expired())
        scheduler_output = self.scheduler.schedule()
        if scheduler_output.is_empty and self._compiling:
            # Only grammars are left to wait for: sleep on them rather than spin.
            pending = [r.grammar for r in self._compiling.values()]
            wait_futures(pending, timeout=0.05, return_when=FIRST_COMPLETED)
        runner_output = self.executor.execute_model(scheduler_output)
        outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        self.num_steps += 1
        return EngineCoreOutputs(outputs=outputs, stats=self.scheduler.make_stats(), rejected=rejected)

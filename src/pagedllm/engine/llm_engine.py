"""LLMEngine: the synchronous heart. add_request, step(), abort; outputs as RequestOutput."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from pagedllm.config import CacheConfig, EngineConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import request_capacity_blocks
from pagedllm.core.scheduler import Scheduler
from pagedllm.engine.input_processor import (
    ProcessedRequest,
    PromptType,
    check_fits_cache,
    check_length,
    tokenize_prompt,
)
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.tokenizer import load_tokenizer
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.outputs import RequestOutput
from pagedllm.platforms import resolve_platform
from pagedllm.request import Request, RequestStatus
from pagedllm.sampling_params import SamplingParams
from pagedllm.worker.executor import UniProcExecutor
from pagedllm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)

_DEFAULT_BATCHED_TOKENS = 2048


class LLMEngine:
    """Owns tokenizer, scheduler, executor and output processor; one `step()` is one batch."""

    def __init__(self, config: EngineConfig, frontend_only: bool = False):
        """`frontend_only` loads just what `process_request` needs (tokenizer, limits): the
        front end of a server whose model runs in an engine process."""
        self.config = config
        start = time.perf_counter()
        self.resolved = resolve_model(config.model)
        self.model_config = ModelConfig.from_resolved(self.resolved, quantization=config.quantization)
        self.tokenizer = load_tokenizer(self.resolved)
        if config.chat_template is not None:
            self.tokenizer.chat_template = config.chat_template
        max_model_len = self._max_model_len()
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens or _DEFAULT_BATCHED_TOKENS,
            max_model_len=max_model_len,
        )
        self.cache_config = CacheConfig(
            block_size=config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            num_kv_blocks=config.num_kv_blocks,
            kv_cache_memory=config.kv_cache_memory,
        )
        self.platform = resolve_platform(config)
        self.device = self.platform.device
        self.dtype = self.platform.select_dtype(config.dtype)
        self._ids = itertools.count()
        if frontend_only:
            self.num_kv_blocks = 0  # set from the engine process once it has sized its cache
            return
        runner = ModelRunner(
            self.model_config,
            self.scheduler_config,
            self.cache_config,
            self.platform,
            self.dtype,
            config.seed,
        )
        self.executor = UniProcExecutor(runner)
        # One block pool per KV-cache group (layers grouped by sliding window).
        self.kv_cache_groups = self.executor.determine_kv_cache_groups()
        self.executor.initialize_kv_cache(self.kv_cache_groups)
        # In blocks: the longest request every group can hold (its full-attention pool's size).
        self.num_kv_blocks = request_capacity_blocks(
            self.kv_cache_groups,
            config.block_size,
            self.scheduler_config.max_num_batched_tokens,
            self.scheduler_config.max_model_len,
        )
        self.scheduler = Scheduler(self.scheduler_config, self.cache_config, self.kv_cache_groups)
        self.output_processor = OutputProcessor(self.tokenizer)
        logger.info(
            "engine ready in %.1f s: %s on %s (%s), KV cache %d blocks x %d tokens = %d tokens",
            time.perf_counter() - start,
            self.model_config.architecture,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.num_kv_blocks,
            self.cache_config.block_size,
            self.kv_capacity_tokens,
        )

    def _max_model_len(self) -> int:
        limit = self.model_config.max_position_embeddings
        if self.config.max_model_len is None:
            return limit
        if self.config.max_model_len > limit:
            raise ValueError(
                f"max_model_len={self.config.max_model_len} exceeds the model's context length {limit}"
            )
        return self.config.max_model_len

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.cache_config.block_size

    @property
    def max_model_len(self) -> int:
        return self.scheduler_config.max_model_len

    def new_request_id(self) -> str:
        return str(next(self._ids))

    # ---- requests -----------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        arrival_time: float | None = None,
        output_kind: str = "final",
        cache_salt: str | None = None,
    ) -> None:
        """Validate and queue one prompt; n > 1 becomes n core requests sharing the prompt's blocks."""
        self.add_processed_request(
            self.process_request(request_id, prompt, params, arrival_time, output_kind, cache_salt)
        )

    def process_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        arrival_time: float | None = None,
        output_kind: str = "final",
        cache_salt: str | None = None,
    ) -> ProcessedRequest:
        """Tokenize and validate without touching engine state (safe off the engine thread)."""
        params = params or SamplingParams()
        arrival_time = arrival_time or time.time()
        text, token_ids = tokenize_prompt(prompt, self.tokenizer, self.model_config.vocab_size)
        params.validate_vocab(self.model_config.vocab_size)
        max_tokens = check_length(
            len(token_ids), params.max_tokens, self.max_model_len, self.kv_capacity_tokens
        )
        check_fits_cache(len(token_ids) + max_tokens, self.kv_capacity_tokens)
        if max_tokens != params.max_tokens:
            params = replace(params, max_tokens=max_tokens)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}-{i}" for i in range(params.n)]
        children, leader = [], None
        for index, child_id in enumerate(child_ids):
            child_params = params
            if params.n > 1:
                # Siblings differ in their seed so that n seeded samples are not n copies.
                seed = None if params.seed is None else params.seed + index
                child_params = replace(params, n=1, seed=seed)
            request = Request(
                request_id=child_id,
                prompt_token_ids=token_ids,
                sampling_params=child_params,
                eos_token_id=self.model_config.eos_token_id,
                arrival_time=arrival_time,
                cache_salt=cache_salt,
                prefix_leader=leader,
            )
            children.append(request)
            leader = leader or request
        return ProcessedRequest(request_id, text, token_ids, params, children, arrival_time, output_kind)

    def add_processed_request(self, processed: ProcessedRequest) -> None:
        """Queue a request made by `process_request` (on the thread that runs `step`)."""
        p = processed
        self.output_processor.add_request(
            p.request_id,
            p.prompt,
            p.prompt_token_ids,
            p.params,
            [c.request_id for c in p.children],
            p.arrival_time,
            output_kind=p.output_kind,
        )
        for child in p.children:
            self.scheduler.add_request(child)

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Stop requests now and free their blocks (safe for unknown or finished ids)."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        for request_id in request_ids:
            child_ids = self.output_processor.abort_request(request_id)
            self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    def run_to_completion(
        self,
        prompts: Sequence[PromptType],
        params: Sequence[SamplingParams],
        on_finished: Callable[[RequestOutput], None] | None = None,
    ) -> list[RequestOutput]:
        """Queue `prompts` (with one `params` each), step until no request is left unfinished,
        and return their final outputs in input order; `on_finished` sees each as it finishes.

        On any error (KeyboardInterrupt included) the requests queued so far are aborted.
        """
        if len(prompts) != len(params):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        request_ids: list[str] = []
        try:
            for prompt, request_params in zip(prompts, params):
                request_id = self.new_request_id()
                self.add_request(request_id, prompt, request_params)
                request_ids.append(request_id)
            finished: dict[str, RequestOutput] = {}
            while self.has_unfinished_requests():
                for output in self.step():
                    if output.finished:
                        finished[output.request_id] = output
                        if on_finished is not None:
                            on_finished(output)
            return [finished[r] for r in request_ids]
        except BaseException:
            self.abort_request(request_ids)
            raise

    # ---- the step -----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, and turn the results into request outputs."""
        scheduler_output = self.scheduler.schedule()
        runner_output = self.executor.execute_model(scheduler_output)
        core_outputs = self.scheduler.update_from_output(scheduler_output, runner_output)
        processed = self.output_processor.process_outputs(core_outputs, time.time())
        if processed.reqs_to_abort:
            self.scheduler.finish_requests(processed.reqs_to_abort, RequestStatus.FINISHED_STOPPED)
        return processed.request_outputs

"""LLMEngine: the front end over an engine core, wherever the core runs.

Input processing (tokenization, validation, limits, n > 1 split into core requests) happens
before a request reaches the core; output processing (incremental detokenization, stop strings,
logprobs, n > 1 merge, output kinds) after its token ids come back. A stop string found here
aborts the sequence in the core, which applies it before its next step. The core sits behind an
`EngineCoreClient`: in this process by default (the offline `LLM`), in its own process for the
server (`MultiprocClient`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler import SchedulerStats
from pagedllm.core.snapshot import SchedulerSnapshot
from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError, InprocClient
from pagedllm.engine.core_messages import EngineCoreInfo
from pagedllm.engine.input_processor import (
    EngineOverloadedError,
    InputProcessor,
    InvalidRequestError,
    PromptType,
)
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.tokenizer import load_tokenizer, tokenizer_model
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_output.grammar_compiler import GrammarCompiler, shared_grammar_compiler

logger = logging.getLogger(__name__)


@dataclass
class EngineStep:
    """What one core step became on the front end's side."""

    request_outputs: list[RequestOutput]
    # (user request id, why) for each request the core refused after the front end accepted it
    # (InvalidRequestError), or that a dead replica was serving (EngineDeadError).
    errors: list[tuple[str, Exception]] = field(default_factory=list)
    stats: SchedulerStats | None = None
    # The cores' answers to `request_snapshot`, when this step brought any.
    snapshots: list[SchedulerSnapshot] = field(default_factory=list)


class LLMEngine:
    """Add requests, `step()`, abort: outputs as `RequestOutput`s, the core behind a client.

    `add_request` and `abort_request` may be called from any thread; `step`/`receive` from one.
    """

    def __init__(self, config: EngineConfig, client: EngineCoreClient | None = None):
        """Without a `client` the core is built here, in this process (with `data_parallel_size`
        > 1: one process per replica)."""
        self.config = config
        if client is None and config.data_parallel_size > 1:
            from pagedllm.engine.dp_client import DataParallelClient

            client = DataParallelClient(config)
        elif client is None:
            from pagedllm.engine.engine_core import EngineCore

            client = InprocClient(EngineCore(config))
        self.client = client
        try:
            # A core in another process loads its model meanwhile.
            resolved = resolve_model(config.model, load_format=config.load_format)
            self.model_config = ModelConfig.from_resolved(resolved, quantization=config.quantization)
            self.tokenizer = load_tokenizer(tokenizer_model(config, resolved))
            if config.chat_template is not None:
                self.tokenizer.chat_template = config.chat_template
            self.info: EngineCoreInfo = client.wait_ready()
        except BaseException:
            client.shutdown()
            raise
        self.grammar_compiler = shared_grammar_compiler(
            (str(resolved.path), config.tokenizer, self.model_config.vocab_size),
            lambda: GrammarCompiler(
                lambda: self.tokenizer, self.model_config.vocab_size, list(self.model_config.eos_token_ids)
            ),
        )
        self.input_processor = InputProcessor(
            self.tokenizer, self.model_config.vocab_size, self.info, self.grammar_compiler
        )
        self.output_processor = OutputProcessor(self.tokenizer)
        # Guards the output processor: requests arrive on one thread, outputs on another.
        self._lock = threading.Lock()
        self._ids = itertools.count()

    # ---- the core's limits --------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def num_kv_blocks(self) -> int:
        return self.info.num_kv_blocks

    @property
    def kv_capacity_tokens(self) -> int:
        return self.info.kv_capacity_tokens

    @property
    def engine_core(self):
        """The core itself, when it runs in this process (tests and tools inspect it)."""
        if not isinstance(self.client, InprocClient):
            raise AttributeError(f"the engine core runs behind {type(self.client).__name__}, not here")
        return self.client.core

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
        constraint_compiled: bool = False,
    ) -> None:
        """Validate and queue one prompt; n > 1 becomes n core requests sharing the prompt's blocks.

        `constraint_compiled`: the caller already compiled the output constraint (AsyncLLM does,
        off its event loop), so it is not compiled (or counted) again here."""
        processed = self.input_processor.process(
            request_id,
            prompt,
            params or SamplingParams(),
            arrival_time or time.time(),
            output_kind,
            cache_salt,
            check_constraint=not constraint_compiled,
        )
        with self._lock:
            self.output_processor.add_request(
                processed.request_id,
                processed.prompt,
                processed.prompt_token_ids,
                processed.params,
                [r.request_id for r in processed.core_requests],
                processed.arrival_time,
                output_kind=processed.output_kind,
            )
        try:
            self.client.add_requests(processed.core_requests)
        except BaseException:
            with self._lock:
                self.output_processor.abort_request(request_id)
            raise

    def abort_request(self, request_ids: str | list[str]) -> int:
        """Stop requests now (safe for unknown or finished ids); returns the sequences it ended."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        with self._lock:
            core_ids = [c for r in request_ids for c in self.output_processor.abort_request(r)]
        if core_ids:
            self.client.abort_requests(core_ids)
        return len(core_ids)

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return self.output_processor.get_num_unfinished_requests()

    # ---- outputs ------------------------------------------------------------------------------
    def receive(self, timeout: float | None = None) -> EngineStep | None:
        """Turn the core's next step into request outputs (None if none came within `timeout`)."""
        core_outputs = self.client.get_outputs(timeout)
        if core_outputs is None:
            return None
        now = time.time()
        errors = []
        with self._lock:
            processed = self.output_processor.process_outputs(core_outputs.outputs, now)
            to_abort = processed.reqs_to_abort
            for rejected in core_outputs.rejected:
                request_id, siblings = self.output_processor.reject(rejected.request_id)
                if request_id is not None:
                    error_type = EngineOverloadedError if rejected.status == 429 else InvalidRequestError
                    errors.append((request_id, error_type(rejected.param, rejected.message)))
                    to_abort.extend(siblings)
            for lost in core_outputs.lost:
                request_id, _ = self.output_processor.reject(lost.request_id)
                if request_id is not None:
                    errors.append((request_id, EngineDeadError(lost.message)))
        if to_abort:
            # Sequences a stop string ended here: the core stops them before its next step.
            self.client.abort_requests(to_abort)
        return EngineStep(processed.request_outputs, errors, core_outputs.stats, core_outputs.snapshots)

    def step(self) -> list[RequestOutput]:
        """Run (or wait for) one core step and return the outputs it made due.

        Raises `InvalidRequestError` for a request the core refused.
        """
        if not self.has_unfinished_requests():
            return []
        result = self.receive()
        if result is None:
            return []
        if result.errors:
            raise result.errors[0][1]
        return result.request_outputs

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

    def shutdown(self) -> None:
        """Stop the core (its process, if it has one)."""
        self.client.shutdown()

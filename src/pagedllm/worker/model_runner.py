"""Runs one scheduled step: update per-request state, build inputs, forward, sample."""

from __future__ import annotations

import logging

import torch

from pagedllm.config import CacheConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.platforms.interface import Platform
from pagedllm.platforms.step_compiler import CompiledStep
from pagedllm.sample.logprobs import compute_token_logprobs
from pagedllm.sample.metadata import SamplingRow, build_sampling_metadata
from pagedllm.sample.sampler import Sampler
from pagedllm.structured_output.matcher import GrammarBrokenError, GrammarMatchers
from pagedllm.worker import dummy_run, kv_cache
from pagedllm.worker.block_table import PersistentBlockTable
from pagedllm.worker.host_staging import HostStaging
from pagedllm.worker.input_batch import build_step_inputs, order_decodes_first
from pagedllm.worker.request_state import RunnerRequestState

logger = logging.getLogger(__name__)


class ModelRunner:
    """Owns the model, its KV cache and the per-request state the runner needs between steps.

    Everything device-specific comes from `platform`, asked once here: process set-up, the
    layers' implementations and weight formats, the attention backend, the sampler's kernel and
    the step compiler (which, once the caches are bound, may take over the model's forward)."""

    def __init__(
        self,
        model_config: ModelConfig,
        scheduler_config: SchedulerConfig,
        cache_config: CacheConfig,
        platform: Platform,
        dtype: torch.dtype,
        seed: int = 0,
        tp_rank: int = 0,
        tp_size: int = 1,
    ):
        """`tp_rank`/`tp_size`: this runner's shard of a tensor-parallel model (the process group
        is already initialised by the executor)."""
        self.model_config = model_config
        self.scheduler_config = scheduler_config
        self.cache_config = cache_config
        self.platform = platform
        self.device = platform.device
        self.dtype = dtype
        self.block_size = cache_config.block_size
        platform.configure_model_process(num_ranks=tp_size)
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.model = load_model(
            model_config, self.device, dtype, tp_rank, tp_size, layer_ops=platform.layer_ops(dtype), seed=seed
        )
        platform.place_weights(self.model)
        self.backend = platform.attention_backend()
        self.sampler = Sampler(platform.sample_kernel())
        self.compiled_step: CompiledStep | None = None
        self.vocab_size = model_config.vocab_size
        max_blocks = -(-scheduler_config.max_model_len // self.block_size)
        # Attention layers grouped by sliding window; each group has its own pool and table.
        self.kv_windows, _ = kv_cache.kv_cache_groups(self.model)
        self.block_table = PersistentBlockTable(
            scheduler_config.max_num_seqs, max_blocks, len(self.kv_windows)
        )
        self.requests: dict[str, RunnerRequestState] = {}
        # Seeded generators outlive preemption so a resumed request continues the same stream.
        self.generators: dict[str, torch.Generator] = {}
        # Unseeded sampling draws from one generator seeded by the engine seed.
        self.default_generator = torch.Generator(device=self.device)
        self.default_generator.manual_seed(seed)
        # Grammar matchers of constrained requests, kept across preemption like the generators.
        self.grammar_matchers = GrammarMatchers(self.vocab_size)
        self.kv_cache_groups: list[KVCacheGroupSpec] = []
        # GPUs: step inputs go through pinned buffers (see host_staging.py).
        self.staging = HostStaging(self.device) if self.device.type == "cuda" else None
        # Start-up warm-up runs the Python layers even where a compiled step would apply.
        self.forward_eagerly = False

    # ---- KV cache -------------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        return kv_cache.bytes_per_block(self.model, self.block_size, self.dtype)

    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]:
        cache = self.cache_config
        if self.platform.profiles_memory and cache.num_kv_blocks is None and cache.kv_cache_memory is None:
            graphs = self.platform.step_compiler(self.dtype, self.scheduler_config) is not None
            self.platform.record_memory_profile(dummy_run.profile_memory(self, capture_graphs=graphs))
        return kv_cache.determine_kv_cache_groups(
            self.model,
            self.cache_config,
            self.scheduler_config,
            self.block_table.max_blocks_per_req,
            self.dtype,
            self.platform,
        )

    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None:
        kv_cache.allocate_kv_caches(
            self.model, self.backend, groups, self.block_size, self.dtype, self.device
        )
        compiler = self.platform.step_compiler(self.dtype, self.scheduler_config)
        self.compiled_step = None if compiler is None else compiler.compile(self.model)
        compiled = None if self.compiled_step is None else self.compiled_step.name
        logger.info(self.platform.describe(self.dtype, compiled))
        if self.platform.warms_up:
            dummy_run.warm_up(self)
        self.kv_cache_groups = list(groups)
        if len(groups) > 1 or groups[0].sliding_window is not None:
            logger.info(
                "KV-cache groups: %s",
                ", ".join(f"{g.num_blocks} blocks ({g.sliding_window or 'full'} window)" for g in groups),
            )

    # ---- per-request state ------------------------------------------------------------------
    def _update_states(self, so: SchedulerOutput) -> None:
        for req_id in so.finished_req_ids:
            self._drop(req_id)
            self.generators.pop(req_id, None)
            self.grammar_matchers.drop(req_id)
        for req_id in so.preempted_req_ids:
            self._drop(req_id)
        for new in so.scheduled_new_reqs:
            self._drop(new.request_id)  # a resumed request arrives in full again
            params = new.sampling_params
            generator = None
            if params.seed is not None:
                generator = self.generators.get(new.request_id)
                if generator is None:
                    generator = torch.Generator(device=self.device)
                    generator.manual_seed(params.seed)
                    self.generators[new.request_id] = generator
            if new.grammar is not None:
                constraint = params.structured_outputs
                self.grammar_matchers.add(new.request_id, new.grammar, constraint.starts_after)
            row = self.block_table.acquire_row()
            num_blocks = self.block_table.write(row, [0] * self.block_table.num_groups, new.block_ids)
            self.requests[new.request_id] = RunnerRequestState(
                request_id=new.request_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=new.num_prompt_tokens,
                sampling_params=params,
                generator=generator,
                row=row,
                num_blocks=num_blocks,
                num_computed_tokens=new.num_computed_tokens,
            )
        for cached in so.scheduled_cached_reqs:
            state = self.requests[cached.request_id]
            state.num_computed_tokens = cached.num_computed_tokens
            if any(cached.new_block_ids):
                state.num_blocks = self.block_table.write(state.row, state.num_blocks, cached.new_block_ids)

    def _drop(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None:
            self.block_table.release_row(state.row)

    # ---- one step ---------------------------------------------------------------------------
    @torch.inference_mode()
    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(so)
        if so.total_num_scheduled_tokens == 0:
            return ModelRunnerOutput()
        req_ids = list(so.num_scheduled_tokens)
        states, num_scheduled, num_decodes = order_decodes_first(
            [self.requests[r] for r in req_ids], [so.num_scheduled_tokens[r] for r in req_ids]
        )
        if self.staging is not None:
            self.staging.begin_step()
        inputs = build_step_inputs(
            states,
            num_scheduled,
            num_decodes,
            self.block_table,
            self.block_size,
            self.backend,
            self.device,
            self.staging,
        )
        if self.staging is not None:
            self.staging.end_step()
        hidden = self.forward(inputs.input_ids, inputs.positions, inputs.attn_metadata)

        output = ModelRunnerOutput()
        ends = inputs.start_positions + inputs.num_scheduled
        sampling = [i for i, s in enumerate(states) if ends[i] == len(s.token_ids)]
        self._prompt_logprobs(states, inputs, hidden, output)
        if sampling:
            self._sample(states, sampling, inputs, hidden, output)
        for state, n in zip(states, num_scheduled):
            state.num_computed_tokens += n
        return output

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, md) -> torch.Tensor:
        """The model's hidden states: through the compiled step where it takes this step."""
        step = self.compiled_step
        if step is not None and not self.forward_eagerly and step.applies(positions, md):
            return step(input_ids, positions, md)
        return self.model(input_ids, positions, md)

    def _sample(self, states, sampling: list[int], inputs, hidden, output: ModelRunnerOutput) -> None:
        rows = inputs.query_start_loc[1:][sampling] - 1
        # Rows rise strictly (one per request), so as many rows as tokens means every row: a
        # decode-only step needs no gather.
        if len(rows) != hidden.shape[0]:
            hidden = hidden[torch.from_numpy(rows).to(self.device)]
        logits = self.model.compute_logits(hidden)
        sample_states = [states[i] for i in sampling]
        metadata = build_sampling_metadata(
            [
                SamplingRow(
                    params=s.sampling_params,
                    token_ids=s.token_ids,
                    num_prompt_tokens=s.num_prompt_tokens,
                    generator=s.generator,
                    eos_token_id=self.model_config.eos_token_id,
                )
                for s in sample_states
            ],
            self.vocab_size,
            self.device,
            default_generator=self.default_generator,
        )
        constrained = None
        matchers = bool(self.grammar_matchers)
        if matchers:
            constrained = self.grammar_matchers.bitmask([s.request_id for s in sample_states])
            if constrained is not None:
                metadata.grammar_rows, metadata.grammar_bitmask = constrained
        result = self.sampler(logits, metadata)
        sampled = result.sampled_token_ids.tolist()
        for i, (state, token) in enumerate(zip(sample_states, sampled)):
            state.token_ids.append(token)
            output.sampled_token_ids[state.request_id] = [token]
            if matchers and self._grammar_ends(state.request_id, token):
                output.stopped_by_grammar.add(state.request_id)
            if result.logprobs is not None and state.sampling_params.logprobs is not None:
                lp = result.logprobs
                output.logprobs[state.request_id] = TokenLogprobs(
                    [lp.token_ids[i]], [lp.logprobs[i]], [lp.ranks[i]]
                )

    def _grammar_ends(self, request_id: str, token: int) -> bool:
        """Advance the request's grammar; True when it has ended. A token it does not allow
        ends the request (with a warning) instead of the engine: that request cannot go on
        within its grammar, the batch beside it can."""
        try:
            return self.grammar_matchers.accept(request_id, token)
        except GrammarBrokenError as exc:
            logger.warning("%s (no allowed token was left to sample); ending the request", exc)
            return True

    def _prompt_logprobs(self, states, inputs, hidden, output: ModelRunnerOutput) -> None:
        """Logprob of every prompt token after the first, chunk by chunk as prefill proceeds."""
        for i, state in enumerate(states):
            num_top = state.sampling_params.prompt_logprobs
            start = int(inputs.start_positions[i])
            if num_top is None or start + 1 >= state.num_prompt_tokens:
                continue
            # Position p predicts prompt token p + 1; the last prompt position predicts a sample.
            end = min(start + int(inputs.num_scheduled[i]), state.num_prompt_tokens - 1)
            first_row = int(inputs.query_start_loc[i])
            logits = self.model.compute_logits(hidden[first_row : first_row + end - start])
            targets = torch.tensor(state.token_ids[start + 1 : end + 1], device=self.device)
            values = compute_token_logprobs(logits, targets, num_top)
            output.prompt_logprobs[state.request_id] = (start + 1, values)

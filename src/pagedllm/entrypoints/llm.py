"""The offline API: `LLM(model).generate(prompts, params)` and `LLM.chat(messages)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from pagedllm.config import EngineConfig
from pagedllm.engine.input_processor import PromptType
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import SamplingParams

Message = dict[str, Any]
_PROGRESS_MIN_PROMPTS = 8


class LLM:
    """Generate text for batches of prompts with continuous batching under the hood."""

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 128,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        kv_cache_memory: float | None = None,
        num_kv_blocks: int | None = None,
        seed: int = 0,
        device: str | None = None,
        chat_template: str | None = None,
        quantization: str | None = None,
        cpu_kernels: bool = True,
        packed_weights: bool | None = None,
        onednn_weights: bool = False,
        step_compiler: bool = True,
        huge_pages: bool = True,
        attention_backend: str = "auto",
        tokenizer: str | None = None,
        load_format: str = "auto",
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        distributed_executor_backend: str = "mp",
        data_parallel_size: int = 1,
        ray_address: str | None = None,
        ray_placement_strategy: str = "PACK",
    ):
        self.engine = LLMEngine(
            EngineConfig(
                model=model,
                dtype=dtype,
                max_model_len=max_model_len,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                block_size=block_size,
                enable_prefix_caching=enable_prefix_caching,
                kv_cache_memory=kv_cache_memory,
                num_kv_blocks=num_kv_blocks,
                seed=seed,
                device=device,
                chat_template=chat_template,
                quantization=quantization,
                cpu_kernels=cpu_kernels,
                packed_weights=packed_weights,
                onednn_weights=onednn_weights,
                step_compiler=step_compiler,
                huge_pages=huge_pages,
                attention_backend=attention_backend,
                tokenizer=tokenizer,
                load_format=load_format,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend=distributed_executor_backend,
                data_parallel_size=data_parallel_size,
                ray_address=ray_address,
                ray_placement_strategy=ray_placement_strategy,
            )
        )

    @classmethod
    def from_engine_config(cls, config: EngineConfig) -> LLM:
        """Build from an `EngineConfig` (what the CLI parses)."""
        llm = cls.__new__(cls)
        llm.engine = LLMEngine(config)
        return llm

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs come back in input order."""
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"got {len(params_list)} sampling params for {len(prompts)} prompts; pass one or one each"
                )
        if use_tqdm is None:
            use_tqdm = len(prompts) >= _PROGRESS_MIN_PROMPTS
        with tqdm(total=len(prompts), desc="Generating", disable=not use_tqdm, unit="req") as bar:
            return self.engine.run_to_completion(prompts, params_list, on_finished=lambda _: bar.update(1))

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then generate.

        `tools` (OpenAI's format) reach the template; a template that cannot render them is
        replaced by the built-in tool template for its chat format."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            {
                "prompt_token_ids": self.apply_chat_template(
                    conversation,
                    chat_template,
                    add_generation_prompt,
                    continue_final_message,
                    chat_template_kwargs,
                    tools,
                )
            }
            for conversation in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def apply_chat_template(
        self,
        conversation: list[Message],
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        from pagedllm.entrypoints.chat_utils import apply_chat_template

        return apply_chat_template(
            self.engine.tokenizer,
            conversation,
            chat_template=chat_template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            chat_template_kwargs=chat_template_kwargs,
            tools=tools,
        )

"""Turns user prompts into validated engine-core requests (the front end's input side)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreRequest
from pagedllm.sampling_params import SamplingParams


class InvalidRequestError(ValueError):
    """A request the engine cannot serve; `param` names the offending field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class EngineOverloadedError(InvalidRequestError):
    """The engine refused a request for load: its waiting queue is full, or the request waited
    in it longer than allowed (`param`: "queue_full" or "queue_timeout"). Retrying later (or
    elsewhere) may succeed."""


PromptType = str | dict[str, Any]


@dataclass
class ProcessedRequest:
    """A validated, tokenized request and its core requests (n of them for n > 1)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams  # max_tokens resolved
    core_requests: list[EngineCoreRequest]
    arrival_time: float
    output_kind: str


class InputProcessor:
    """Tokenizes and validates prompts against the model's vocabulary and the core's limits.

    Everything a core would refuse is refused here, with the parameter to blame, before the
    request reaches the core: the core may be in another process.
    """

    def __init__(self, tokenizer, vocab_size: int, info: EngineCoreInfo, grammar_compiler=None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = info.max_model_len
        self.kv_capacity_tokens = info.kv_capacity_tokens
        # Compiles output constraints (a bad one is refused here, before the core sees it).
        self.grammar_compiler = grammar_compiler

    def process(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams,
        arrival_time: float,
        output_kind: str = "final",
        cache_salt: str | None = None,
        check_constraint: bool = True,
    ) -> ProcessedRequest:
        """Tokenize, check and split into core requests; touches no engine state."""
        text, token_ids = tokenize_prompt(prompt, self.tokenizer, self.vocab_size)
        params.validate_vocab(self.vocab_size)
        if params.structured_outputs is not None and check_constraint:
            self.grammar_compiler.compile(params.structured_outputs)
        max_tokens = check_length(
            len(token_ids), params.max_tokens, self.max_model_len, self.kv_capacity_tokens
        )
        check_fits_cache(len(token_ids) + max_tokens, self.kv_capacity_tokens)
        if max_tokens != params.max_tokens:
            params = replace(params, max_tokens=max_tokens)
        if params.n == 1:
            core_requests = [
                EngineCoreRequest(request_id, token_ids, params, arrival_time, cache_salt=cache_salt)
            ]
        else:
            core_requests = []
            for index in range(params.n):
                # Siblings differ in their seed so that n seeded samples are not n copies.
                seed = None if params.seed is None else params.seed + index
                core_requests.append(
                    EngineCoreRequest(
                        f"{request_id}-{index}",
                        token_ids,
                        replace(params, n=1, seed=seed),
                        arrival_time,
                        cache_salt=cache_salt,
                        # The first sample prefills the prompt; the others share its blocks.
                        prefix_leader_id=f"{request_id}-0" if index else None,
                    )
                )
        return ProcessedRequest(request_id, text, token_ids, params, core_requests, arrival_time, output_kind)


def tokenize_prompt(prompt: PromptType, tokenizer, vocab_size: int) -> tuple[str | None, list[int]]:
    """A string, or vLLM's token form `{"prompt_token_ids": [...]}`, to (text, token ids)."""
    if isinstance(prompt, str):
        if prompt == "":
            raise InvalidRequestError("prompt", "prompt must not be empty")
        return prompt, tokenizer(prompt).input_ids
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, list | tuple) or not all(isinstance(t, int) for t in ids):
                raise InvalidRequestError("prompt", "prompt_token_ids must be a list of integers")
            if not ids:
                raise InvalidRequestError("prompt", "prompt_token_ids must not be empty")
            bad = [t for t in ids if t < 0 or t >= vocab_size]
            if bad:
                raise InvalidRequestError(
                    "prompt", f"prompt contains token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
                )
            return prompt.get("prompt"), list(ids)
        if "prompt" in prompt:
            return tokenize_prompt(prompt["prompt"], tokenizer, vocab_size)
    raise InvalidRequestError(
        "prompt", f"a prompt is a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}"
    )


def check_length(
    num_prompt_tokens: int, max_tokens: int | None, max_model_len: int, kv_capacity_tokens: int | None = None
) -> int:
    """Resolve max_tokens and reject what can never fit.

    None fills the context, but never beyond what the KV cache holds for one sequence.
    """
    if num_prompt_tokens >= max_model_len:
        raise InvalidRequestError(
            "prompt",
            f"prompt has {num_prompt_tokens} tokens but the context holds {max_model_len} "
            "(prompt plus at least one generated token); shorten the prompt",
        )
    room = max_model_len - num_prompt_tokens
    if max_tokens is None:
        fill = min(max_model_len, kv_capacity_tokens or max_model_len) - num_prompt_tokens
        return max(fill, 1)
    if max_tokens > room:
        raise InvalidRequestError(
            "max_tokens",
            f"max_tokens={max_tokens} plus the prompt's {num_prompt_tokens} tokens exceeds the context "
            f"length {max_model_len}; max_tokens can be at most {room}",
        )
    return max_tokens


def check_fits_cache(num_tokens: int, kv_capacity_tokens: int) -> None:
    """A request longer than the whole KV cache could never be scheduled: reject it now."""
    if num_tokens > kv_capacity_tokens:
        raise InvalidRequestError(
            "max_tokens",
            f"prompt plus max_tokens needs {num_tokens} tokens of KV cache but the cache holds "
            f"{kv_capacity_tokens}; lower max_tokens or give the engine more KV cache memory",
        )

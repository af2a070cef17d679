"""POST /v1/completions: one engine request per prompt (n samples each), merged concurrently.

Choice `i * n + j` is sample j of prompt i, as OpenAI and vLLM number them. `echo` puts the
prompt in front of the text and, with `logprobs`, the prompt tokens' logprobs (None for the
first) in front of the generated ones, which is what evaluation harnesses score. `max_tokens=0`
with `echo` returns the prompt only (one token is generated and dropped).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pagedllm.entrypoints.openai.body import parse_body, read_json_object
from pagedllm.entrypoints.openai.context import ServingContext, new_id, usage
from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.entrypoints.openai.logprobs import CompletionLogprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    MAX_PROMPTS,
    CompletionRequest,
    reject_unsupported,
)
from pagedllm.entrypoints.openai.streaming import (
    DONE,
    SSEResponse,
    cancel_on_disconnect,
    merge_streams,
    prime_streams,
    sse,
    sse_error,
)
from pagedllm.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from pagedllm.sampling_params import SamplingParams

_PROMPT_FORMS = "a non-empty string, a list of strings, a list of token ids, or a list of token-id lists"


@dataclass
class _Prompt:
    text: str | None  # None for token-id prompts (decoded when echoed)
    token_ids: list[int]
    params: SamplingParams


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalize_prompts(value) -> list[str | list[int]]:
    """OpenAI's four prompt forms as a list of prompts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if len(value) > MAX_PROMPTS and not all(_is_token(t) for t in value):
            raise bad_request(f"a request holds at most {MAX_PROMPTS} prompts, got {len(value)}", "prompt")
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(_is_token(t) for t in value):
            return [list(value)]
        if all(isinstance(p, list) and all(_is_token(t) for t in p) for p in value):
            return [list(p) for p in value]
    raise bad_request(f"prompt must be {_PROMPT_FORMS}", "prompt")


def _prepare(ctx: ServingContext, req: CompletionRequest) -> list[_Prompt]:
    if req.max_tokens == 0 and not req.echo:
        raise bad_request("max_tokens must be at least 1 (0 is allowed only with echo)", "max_tokens")
    prompt_logprobs = req.prompt_logprobs
    if req.echo and req.logprobs is not None:
        prompt_logprobs = max(req.logprobs, prompt_logprobs or 0)
    prompts = []
    for prompt in normalize_prompts(req.prompt):
        text = prompt if isinstance(prompt, str) else None
        if text is not None:
            if not text:
                raise bad_request(f"prompt must not be empty; a prompt is {_PROMPT_FORMS}", "prompt")
            token_ids = ctx.tokenizer(text, add_special_tokens=req.add_special_tokens is not False).input_ids
        else:
            token_ids = prompt
        max_tokens = 1 if req.max_tokens == 0 else req.max_tokens
        params = req.to_sampling_params(max_tokens, req.logprobs, prompt_logprobs)
        prompts.append(_Prompt(text, token_ids, params))
    return prompts


class _ChoiceWriter:
    """Turns one sequence's output (whole, or delta by delta) into completion choices."""

    def __init__(self, ctx: ServingContext, req: CompletionRequest, prompt: _Prompt, index: int):
        self.ctx, self.req, self.prompt, self.index = ctx, req, prompt, index
        self.logprobs = None
        if req.logprobs is not None:
            self.logprobs = CompletionLogprobs(req.logprobs, ctx.token_text)
        self.started = False
        self.num_tokens = 0

    def choice(self, out: CompletionOutput, prompt_logprobs: list[PositionLogprobs | None] | None):
        """The choice for this output, or None when it carries nothing new."""
        req, prompt = self.req, self.prompt
        text, token_ids, positions = out.text, out.token_ids, out.logprobs or []
        finish_reason = out.finish_reason
        if req.max_tokens == 0:  # echo only: drop the one generated token
            text, token_ids, positions = "", [], []
            finish_reason = "length" if finish_reason else None
        self.num_tokens += len(token_ids)
        first, self.started = not self.started, True
        parts = []
        if first and req.echo:
            text = self._prompt_text() + text
            if self.logprobs is not None:
                prompt_positions = prompt_logprobs or [None] * len(prompt.token_ids)
                parts.append(self.logprobs.build(prompt.token_ids, prompt_positions))
        if self.logprobs is not None:
            parts.append(self.logprobs.build(token_ids, positions))
        logprobs = _concat(parts) if parts else None
        show_prompt_logprobs = first and req.prompt_logprobs is not None
        if not (text or finish_reason or logprobs and logprobs["tokens"] or show_prompt_logprobs):
            return None
        choice = {
            "index": self.index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "stop_reason": out.stop_reason,
        }
        if show_prompt_logprobs:
            choice["prompt_logprobs"] = prompt_logprobs_json(
                prompt.token_ids, prompt_logprobs or [None] * len(prompt.token_ids), req.prompt_logprobs
            )
        return choice

    def _prompt_text(self) -> str:
        if self.prompt.text is None:
            self.prompt.text = self.ctx.tokenizer.decode(self.prompt.token_ids)
        return self.prompt.text


def _concat(parts: list[dict[str, list]]) -> dict[str, list]:
    return {key: [v for part in parts for v in part[key]] for key in parts[0]}


class _Completion:
    """One completions request in flight."""

    def __init__(self, ctx: ServingContext, req: CompletionRequest, prompts: list[_Prompt]):
        self.ctx, self.req, self.prompts = ctx, req, prompts
        self.request_id = new_id("cmpl")
        self.created = int(time.time())
        self.writers: dict[int, _ChoiceWriter] = {}

    def streams(self, output_kind: str):
        return [
            self.ctx.llm.generate(
                {"prompt_token_ids": p.token_ids, "prompt": p.text},
                p.params,
                f"{self.request_id}-{i}",
                output_kind=output_kind,
                cache_salt=self.req.cache_salt,
            )
            for i, p in enumerate(self.prompts)
        ]

    def writer(self, prompt_index: int, sample_index: int) -> _ChoiceWriter:
        index = prompt_index * self.req.n + sample_index
        if index not in self.writers:
            self.writers[index] = _ChoiceWriter(self.ctx, self.req, self.prompts[prompt_index], index)
        return self.writers[index]

    def envelope(self, choices: list[dict]) -> dict:
        return {
            "id": self.request_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.ctx.served_model_name,
            "choices": choices,
            "system_fingerprint": None,
        }

    async def run(self) -> dict:
        finals: dict[int, RequestOutput] = {}
        async for i, out in merge_streams(self.streams("final")):
            finals[i] = out
        choices = []
        for i in range(len(self.prompts)):
            for out in sorted(finals[i].outputs, key=lambda o: o.index):
                choices.append(self.writer(i, out.index).choice(out, finals[i].prompt_logprobs))
        response = self.envelope(choices)
        response["usage"] = usage(
            sum(len(o.prompt_token_ids) for o in finals.values()),
            sum(w.num_tokens for w in self.writers.values()),
            sum(o.num_cached_tokens for o in finals.values()),
        )
        return response

    async def stream(self, streams) -> AsyncIterator[str]:
        prompt_logprobs: dict[int, list] = {}
        cached = [0] * len(self.prompts)
        usage_wanted = self.req.include_usage or self.req.continuous_usage
        try:
            async with aclosing(merge_streams(streams)) as merged:
                async for i, out in merged:
                    if out.prompt_logprobs is not None:
                        prompt_logprobs[i] = out.prompt_logprobs
                    cached[i] = max(cached[i], out.num_cached_tokens)
                    for sample in out.outputs:
                        writer = self.writer(i, sample.index)
                        choice = writer.choice(sample, prompt_logprobs.get(i))
                        if choice is None:
                            continue
                        chunk = self.envelope([choice])
                        if usage_wanted:
                            n_prompt = len(self.prompts[i].token_ids)
                            chunk["usage"] = None
                            if self.req.continuous_usage:
                                chunk["usage"] = usage(n_prompt, writer.num_tokens, cached[i])
                        yield sse(chunk)
            if self.req.include_usage:
                chunk = self.envelope([])
                chunk["usage"] = usage(
                    sum(len(p.token_ids) for p in self.prompts),
                    sum(w.num_tokens for w in self.writers.values()),
                    sum(cached),
                )
                yield sse(chunk)
        except Exception as exc:
            yield sse_error(exc)
        yield DONE


async def create_completion(ctx: ServingContext, request: Request) -> Response:
    data = await read_json_object(request)
    reject_unsupported(data)
    req = parse_body(CompletionRequest, data)
    req.check_common()
    ctx.check_model(req.model)
    completion = _Completion(ctx, req, _prepare(ctx, req))
    if req.stream:
        primed = await cancel_on_disconnect(
            request, prime_streams(completion.streams("delta")), completion.request_id
        )
        return SSEResponse(completion.stream(primed), completion.request_id)
    result = await cancel_on_disconnect(request, completion.run(), completion.request_id)
    return JSONResponse(result)

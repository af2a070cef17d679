"""POST /v1/chat/completions: the conversation through the chat template, one engine request."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from pagedllm.entrypoints.chat_utils import apply_chat_template
from pagedllm.entrypoints.openai.body import parse_body, read_json_object
from pagedllm.entrypoints.openai.context import ServingContext, new_id, usage
from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.entrypoints.openai.logprobs import chat_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    reject_unsupported,
)
from pagedllm.entrypoints.openai.reasoning import get_reasoning_parser
from pagedllm.entrypoints.openai.streaming import (
    DONE,
    SSEResponse,
    cancel_on_disconnect,
    merge_streams,
    prime_streams,
    sse,
    sse_error,
)
from pagedllm.entrypoints.openai.tool_calling import ToolCallStream, finish_message, parse_tool_request
from pagedllm.outputs import CompletionOutput, RequestOutput


def _part_text(part: Any, where: str) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise bad_request("a content part is an object with a 'type'", where)
    if part["type"] not in ("text", "input_text") or not isinstance(part.get("text"), str):
        raise bad_request(f"only text content parts are supported, got type {part['type']!r}", where)
    return part["text"]


def normalize_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them: text content, content parts joined by newlines."""
    if not messages:
        raise bad_request("messages must be a non-empty list of messages", "messages")
    conversation = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request("a message is an object with a string 'role'", where)
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(_part_text(p, f"{where}.content.{j}") for j, p in enumerate(content))
        elif content is not None and not isinstance(content, str):
            raise bad_request("content must be a string, a list of content parts or null", f"{where}.content")
        conversation.append({**message, "content": content})
    return conversation


def add_generation_prompt(req) -> bool:
    """True unless turned off, or left unset while continuing the final (assistant) message."""
    if req.add_generation_prompt is None or "add_generation_prompt" not in req.model_fields_set:
        return not req.continue_final_message
    return req.add_generation_prompt


class _Chat:
    """One chat completions request in flight."""

    def __init__(self, ctx: ServingContext, req: ChatCompletionRequest, conversation: list[dict]):
        self.ctx, self.req = ctx, req
        self.request_id = new_id("chatcmpl")
        self.created = int(time.time())
        self.tool_request = parse_tool_request(req, ctx.enable_auto_tool_choice, ctx.tool_call_parser)
        self.reasoning = get_reasoning_parser(ctx.reasoning_parser) if ctx.reasoning_parser else None
        self.prompt_token_ids = apply_chat_template(
            ctx.tokenizer,
            conversation,
            chat_template=ctx.chat_template,
            add_generation_prompt=add_generation_prompt(req),
            continue_final_message=bool(req.continue_final_message),
            chat_template_kwargs=req.chat_template_kwargs,
            tools=req.tools or None,
        )
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        self.num_top = (req.top_logprobs or 0) if req.logprobs else None
        self.params = req.to_sampling_params(max_tokens, self.num_top, req.prompt_logprobs)
        forced = self.tool_request.constraint() if self.tool_request is not None else None
        if forced is not None:
            if self.params.structured_outputs is not None:
                raise bad_request(
                    "a forced tool call (tool_choice 'required' or a named function) cannot be combined "
                    "with response_format or structured_outputs",
                    "tool_choice",
                )
            self.params = dataclasses.replace(self.params, structured_outputs=forced)
        constraint = self.params.structured_outputs
        if constraint is not None and self.reasoning is not None and self._thinks(req):
            # The model thinks first: the grammar applies once its reasoning has ended.
            end = ctx.tokenizer(self.reasoning.end_tag, add_special_tokens=False).input_ids
            constraint = dataclasses.replace(constraint, starts_after=end)
            self.params = dataclasses.replace(self.params, structured_outputs=constraint)
        last = conversation[-1]
        self.echo = (last.get("content") or "") if req.echo and last["role"] == "assistant" else ""
        self.prompt_logprobs_sent = False

    def streams(self, output_kind: str):
        return [
            self.ctx.llm.generate(
                {"prompt_token_ids": self.prompt_token_ids},
                self.params,
                self.request_id,
                output_kind=output_kind,
                cache_salt=self.req.cache_salt,
            )
        ]

    def logprobs(self, out: CompletionOutput) -> dict | None:
        if self.num_top is None:
            return None
        return chat_logprobs(out.token_ids, out.logprobs or [], self.num_top, self.ctx.token_text)

    def envelope(self, obj: str, choices: list[dict]) -> dict:
        return {
            "id": self.request_id,
            "object": obj,
            "created": self.created,
            "model": self.ctx.served_model_name,
            "choices": choices,
            "system_fingerprint": None,
        }

    def usage_of(self, out: RequestOutput, num_tokens: int) -> dict:
        return usage(len(out.prompt_token_ids), num_tokens, out.num_cached_tokens)

    def with_prompt_logprobs(self, response: dict, out: RequestOutput) -> dict:
        if self.req.prompt_logprobs is not None and out.prompt_logprobs is not None:
            response["prompt_logprobs"] = prompt_logprobs_json(
                out.prompt_token_ids, out.prompt_logprobs, self.req.prompt_logprobs
            )
        return response

    async def run(self) -> dict:
        final = None
        async for _, out in merge_streams(self.streams("final")):
            final = out
        choices = [self.choice(out) for out in sorted(final.outputs, key=lambda o: o.index)]
        response = self.envelope("chat.completion", choices)
        response["usage"] = self.usage_of(final, sum(len(o.token_ids) for o in final.outputs))
        return self.with_prompt_logprobs(response, final)

    @staticmethod
    def _thinks(req: ChatCompletionRequest) -> bool:
        # Qwen3-style templates turn thinking off with enable_thinking=False (an empty <think>
        # block in the prompt): then there is no reasoning to wait for.
        return (req.chat_template_kwargs or {}).get("enable_thinking", True) is not False

    def choice(self, out: CompletionOutput) -> dict:
        """One whole choice: reasoning split off, then tool calls extracted as the request asks."""
        text, reasoning = out.text, None
        if self.reasoning is not None:
            split = self.reasoning.extract(text)
            reasoning, text = split.reasoning_content, split.content or ""
        message = finish_message(self.tool_request, text, out.finish_reason)
        content = message.content
        if self.reasoning is not None and not content:
            content = None  # all of it was reasoning
        if self.echo:
            content = self.echo + (content or "")
        body = {"role": "assistant", "content": content, "refusal": None, "tool_calls": message.tool_calls}
        if self.reasoning is not None:
            body["reasoning_content"] = reasoning
        return {
            "index": out.index,
            "message": body,
            "logprobs": self.logprobs(out),
            "finish_reason": message.finish_reason,
            "stop_reason": out.stop_reason,
        }

    def deltas(self, sample: CompletionOutput, state: tuple) -> tuple[list[dict], str | None]:
        """A streamed sample's new deltas (reasoning, content, tool calls) and finish reason."""
        reasoning_stream, tool_stream = state
        text, deltas = sample.text, []
        if reasoning_stream is not None:
            thought, text = reasoning_stream.feed(text)
            if sample.finish_reason is not None:
                more_thought, more_text = reasoning_stream.finish()
                thought, text = thought + more_thought, text + more_text
            if thought:
                deltas.append({"reasoning_content": thought})
        delta = tool_stream.feed(text)
        if delta:
            deltas.append(delta)
        finish_reason = sample.finish_reason
        if finish_reason is not None:
            held, finish_reason = tool_stream.finish(finish_reason)
            deltas.extend(held)
        return deltas, finish_reason

    async def stream(self, streams) -> AsyncIterator[str]:
        req = self.req
        usage_wanted = req.include_usage or req.continuous_usage
        num_tokens = [0] * req.n
        states = [
            (self.reasoning.streaming() if self.reasoning else None, ToolCallStream(self.tool_request))
            for _ in range(req.n)
        ]
        last = None
        try:
            async with aclosing(merge_streams(streams)) as merged:
                async for _, out in merged:
                    if last is None:  # the role first, for every choice
                        for index in range(req.n):
                            delta = {"role": "assistant", "content": self.echo}
                            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                            yield sse(self._chunk([choice], out, 0, usage_wanted))
                    last = out
                    for sample in out.outputs:
                        num_tokens[sample.index] += len(sample.token_ids)
                        new_logprobs = self.num_top is not None and sample.token_ids
                        deltas, finish_reason = self.deltas(sample, states[sample.index])
                        if not deltas and (new_logprobs or finish_reason is not None):
                            deltas = [{}]
                        # Nothing to tell yet (half a UTF-8 character, text held back) sends nothing.
                        for position, delta in enumerate(deltas):
                            final = position == len(deltas) - 1
                            choice = {
                                "index": sample.index,
                                "delta": delta,
                                "logprobs": self.logprobs(sample) if position == 0 else None,
                                "finish_reason": finish_reason if final else None,
                            }
                            if final and finish_reason is not None:
                                choice["stop_reason"] = sample.stop_reason
                            yield sse(self._chunk([choice], out, num_tokens[sample.index], usage_wanted))
            if req.include_usage and last is not None:
                chunk = self.envelope("chat.completion.chunk", [])
                chunk["usage"] = self.usage_of(last, sum(num_tokens))
                yield sse(chunk)
        except Exception as exc:
            yield sse_error(exc)
        yield DONE

    def _chunk(self, choices: list[dict], out: RequestOutput, num_tokens: int, usage_wanted: bool) -> dict:
        chunk = self.envelope("chat.completion.chunk", choices)
        if out.prompt_logprobs is not None and not self.prompt_logprobs_sent:
            self.prompt_logprobs_sent = True
            self.with_prompt_logprobs(chunk, out)
        if usage_wanted:
            chunk["usage"] = self.usage_of(out, num_tokens) if self.req.continuous_usage else None
        return chunk


async def create_chat_completion(ctx: ServingContext, request: Request) -> Response:
    data = await read_json_object(request)
    reject_unsupported(data)
    req = parse_body(ChatCompletionRequest, data)
    req.check_common()
    ctx.check_model(req.model)
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    chat = _Chat(ctx, req, normalize_messages(req.messages))
    if req.stream:
        primed = await cancel_on_disconnect(request, prime_streams(chat.streams("delta")), chat.request_id)
        return SSEResponse(chat.stream(primed), chat.request_id)
    return JSONResponse(await cancel_on_disconnect(request, chat.run(), chat.request_id))

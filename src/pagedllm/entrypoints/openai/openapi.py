"""The server's OpenAPI document: every route's request body, its answers and its errors.

The routes read their bodies by hand (`body.read_json_object` + `parse_body`, for exact
error messages), so FastAPI does not see the request models; this module declares them. The
schemas come from the same pydantic models that validate the requests, with the served model's
own limits filled in (its name as an enum, the largest token id, the context length), so the
document states every rule a JSON schema can. What it cannot state stays a documented 400 or
404: a prompt whose token count (not its characters) exceeds the context, prompt plus
max_tokens beyond it, cross-field rules (min_tokens <= max_tokens, best_of == n,
stream_options only when streaming, top_logprobs only with logprobs, tool_choice naming a
listed tool), constraints xgrammar cannot compile, and chat templates that refuse a conversation.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

_REF = "#/components/schemas/{model}"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Doc):
    """OpenAI's error body, on every non-2xx answer."""

    error: ErrorDetail


class PromptTokensDetails(_Doc):
    cached_tokens: int


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionChoice(_Doc):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "abort"] | None
    stop_reason: int | str | None = None
    prompt_logprobs: list[Any] | None = None


class CompletionResponse(_Doc):
    """POST /v1/completions (and each streamed chunk, with one choice and usage null or set)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ToolCallFunction(_Doc):
    name: str
    arguments: str


class ToolCall(_Doc):
    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(_Doc):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Doc):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "abort", "tool_calls"] | None
    stop_reason: int | str | None = None


class ChatCompletionResponse(_Doc):
    """POST /v1/chat/completions without streaming."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    prompt_logprobs: list[Any] | None = None


class ModelCard(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int
    permission: list[Any]


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(_Doc):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(_Doc):
    prompt: str


class ReadyResponse(_Doc):
    status: Literal["ready"]


class VersionResponse(_Doc):
    version: str


class ReplicaHealth(_Doc):
    replica: int
    status: Literal["serving", "dead"]
    pid: int | None
    error: str | None = None


class HealthResponse(_Doc):
    """`replicas` (with --data-parallel-size): which serve; "degraded" while some are dead."""

    status: Literal["ok", "degraded"]
    replicas: list[ReplicaHealth] | None = None


_MODELS = (
    CompletionRequest,
    ChatCompletionRequest,
    TokenizeRequest,
    DetokenizeRequest,
    ErrorResponse,
    CompletionResponse,
    ChatCompletionResponse,
    ModelList,
    ModelCard,
    TokenizeResponse,
    DetokenizeResponse,
    VersionResponse,
    ReadyResponse,
    HealthResponse,
)

_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": (
                "Server-sent events when `stream` is true, one per chunk: `data` holds a "
                "CompletionResponse-shaped JSON object whose choices carry what is new (chat chunks "
                "carry `delta` instead of `message`, `object` chat.completion.chunk), or an error "
                'object `{"error": ...}` if the engine fails mid-stream; the last event\'s data is '
                "`[DONE]`."
            ),
            "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
        }
    }
}

_ERRORS = {
    400: "The request is invalid; `error.param` names the field and `error.message` says why.",
    401: "Missing or wrong API key (`Authorization: Bearer KEY`), when the server has one.",
    404: "Unknown model name, or no such route.",
    405: "Method not allowed on this route (`Allow` lists the allowed ones).",
    413: "The request body exceeds the server's limit (--max-request-body-bytes).",
    415: "The body is not `application/json`.",
    429: "The engine is overloaded (its waiting queue is full, or the request waited too long in it); "
    "retry after `Retry-After` seconds.",
    503: "The engine is not running (`error.code` engine_dead).",
}


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict:
    return {"application/json": {"schema": _ref(model)}}


def _errors(*statuses: int) -> dict:
    return {str(s): {"description": _ERRORS[s], "content": _json(ErrorResponse)} for s in statuses}


_BODY_ERRORS = (400, 401, 404, 405, 413, 415)

# path -> method -> (request body model or None, 200 response content, summary, error statuses)
_OPERATIONS: dict[str, dict[str, tuple]] = {
    "/v1/completions": {
        "post": (
            CompletionRequest,
            {**_json(CompletionResponse), **_SSE},
            "Complete prompts (OpenAI's legacy completions).",
            (*_BODY_ERRORS, 429, 503),
        )
    },
    "/v1/chat/completions": {
        "post": (
            ChatCompletionRequest,
            {**_json(ChatCompletionResponse), **_SSE},
            "Answer a conversation (OpenAI's chat completions), with tools and structured outputs.",
            (*_BODY_ERRORS, 429, 503),
        )
    },
    "/tokenize": {
        "post": (
            TokenizeRequest,
            _json(TokenizeResponse),
            "Tokenize a prompt, or a conversation through the chat template.",
            _BODY_ERRORS,
        )
    },
    "/detokenize": {
        "post": (DetokenizeRequest, _json(DetokenizeResponse), "Turn token ids into text.", _BODY_ERRORS)
    },
    "/v1/models": {"get": (None, _json(ModelList), "The served model.", (401, 405))},
    "/v1/models/{model_id}": {"get": (None, _json(ModelCard), "One model, by name.", (401, 404, 405))},
    "/health": {
        "get": (
            None,
            {"application/json": {"schema": _ref(HealthResponse)}},
            "Liveness: 200 while the engine (any replica) serves, else 503 (also while a dead "
            "engine core is being replaced).",
            (405, 503),
        )
    },
    "/ready": {
        "get": (
            None,
            _json(ReadyResponse),
            "Readiness: 200 while the server takes requests; 503 while it drains or its engine is down.",
            (405, 503),
        )
    },
    "/version": {"get": (None, _json(VersionResponse), "pagedllm's version.", (405,))},
    "/metrics": {
        "get": (
            None,
            {"text/plain": {"schema": {"type": "string", "description": "Prometheus text format"}}},
            "Prometheus metrics.",
            (401, 405),
        )
    },
}


def build_openapi(
    app: FastAPI,
    served_model_name: str,
    max_model_len: int,
    vocab_size: int,
    open_paths: frozenset[str] | None = None,
    extra_operations: dict[str, dict[str, tuple]] | None = None,
) -> dict:
    """The whole document (FastAPI's paths, with our bodies, answers and limits). `open_paths`:
    with an API key, the paths answered without it (the others declare bearer auth).
    `extra_operations`: other routes' entries, shaped as `_OPERATIONS`'s but with the 200
    answer's pydantic model in place of its content (the web console's snapshot)."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=(
            "An OpenAI-compatible LLM server. Every error is OpenAI's error body. Limits of the "
            f"served model: context {max_model_len} tokens, token ids in [0, {vocab_size})."
        ),
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _MODELS:
        model_schema = model.model_json_schema(ref_template=_REF, by_alias=True)
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    _fill_limits(components, served_model_name, max_model_len, vocab_size)
    if open_paths is not None:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the server's --api-key"}
        }
    tokenize = components["TokenizeRequest"]
    tokenize["oneOf"] = [
        {"required": ["prompt"], "not": {"required": ["messages"]}},
        {"required": ["messages"], "not": {"required": ["prompt"]}},
    ]
    operations = dict(_OPERATIONS)
    for path, methods in (extra_operations or {}).items():
        operations[path] = {}
        for method, (body, answer, summary, errors) in methods.items():
            answer_schema = answer.model_json_schema(ref_template=_REF, by_alias=True)
            components.update(answer_schema.pop("$defs", {}))
            components[answer.__name__] = answer_schema
            operations[path][method] = (body, _json(answer), summary, errors)
    for path, methods in operations.items():
        for method, (body, ok, summary, errors) in methods.items():
            operation = schema["paths"].setdefault(path, {}).setdefault(method, {})
            operation["summary"] = summary
            if body is not None:
                operation["requestBody"] = {"required": True, "content": _json(body)}
            operation["responses"] = {
                "200": {"description": "Success.", "content": ok},
                **_errors(*errors),
            }
            if open_paths is not None and path not in open_paths:
                operation["security"] = [{"bearer": []}]
            if path == "/v1/models/{model_id}":
                operation["parameters"] = [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": [served_model_name]},
                    }
                ]
    return schema


def _fill_limits(components: dict, served_model_name: str, max_model_len: int, vocab_size: int) -> None:
    """The served model's limits in the request schemas: its name, the context, token ids."""
    max_id = vocab_size - 1

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer" and node.get("minimum") == 0 and "maximum" not in node:
                node["maximum"] = max_id  # every non-negative integer list in a body is token ids
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in ("CompletionRequest", "ChatCompletionRequest", "TokenizeRequest", "DetokenizeRequest"):
        properties = components[name]["properties"]
        properties["model"] = {
            "anyOf": [{"type": "string", "enum": [served_model_name]}, {"type": "null"}],
            "description": "the served model's name (may be left out)",
        }
        for field in ("prompt", "stop_token_ids", "allowed_token_ids", "tokens"):
            if field in properties:
                walk(properties[field])
        for field in ("max_tokens", "max_completion_tokens"):
            if field in properties:
                _set_maximum(properties[field], max_model_len)


def _set_maximum(field_schema: dict, maximum: int) -> None:
    for option in field_schema.get("anyOf", [field_schema]):
        if option.get("type") == "integer":
            option["maximum"] = maximum


def install_openapi(
    app: FastAPI,
    served_model_name: str,
    max_model_len: int,
    vocab_size: int,
    open_paths: frozenset[str] | None = None,
    extra_operations: dict[str, dict[str, tuple]] | None = None,
) -> None:
    """Make `app.openapi()` (and GET /openapi.json) return `build_openapi`'s document, built once."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(
                app, served_model_name, max_model_len, vocab_size, open_paths, extra_operations
            )
        return app.openapi_schema

    app.openapi = openapi

"""Request bodies: OpenAI's fields plus vLLM's extras, parsed and validated at the boundary.

Unknown fields are ignored. Fields we do not implement but that would change the result are
rejected with a 400 naming the field (see `reject_unsupported`).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

MAX_LOGPROBS = 20  # as vLLM's default max_logprobs
MAX_N = 128
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class SamplingRequest(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=_SEED_MIN, le=_SEED_MAX)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(0, ge=0)
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    cache_salt: str | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None
    # Constrained decoding (vLLM's names): one of json / json_object / regex / choice / grammar /
    # structural_tag, plus any_whitespace; or the older guided_* fields.
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # JSON with free whitespace instead of compact (opt-in: small models loop in whitespace).
    any_whitespace: bool | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def check_common(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options can only be set when stream is true", "stream_options")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request(
                f"best_of={self.best_of} is not supported; it must be unset or equal to n ({self.n})",
                "best_of",
            )
        if self.cache_salt is not None and self.cache_salt == "":
            raise bad_request("cache_salt must be a non-empty string when given", "cache_salt")
        self.constraint()  # a bad constraint is a 400 before anything else runs

    def constraint(self) -> StructuredOutputsParams | None:
        """The one output constraint this request asks for, from whichever field carries it."""
        sources = []
        fmt = self.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            sources.append(("response_format", _from_response_format(fmt)))
        if self.structured_outputs is not None:
            sources.append(("structured_outputs", dict(self.structured_outputs)))
        for field, kind in _GUIDED_FIELDS.items():
            value = getattr(self, field)
            if value is not None:
                sources.append((field, {kind: value}))
        if not sources:
            return None
        if len(sources) > 1:
            names = ", ".join(name for name, _ in sources)
            raise bad_request(f"give one output constraint, not several ({names})", sources[1][0])
        param, spec = sources[0]
        if self.any_whitespace is not None:
            spec.setdefault("any_whitespace", bool(self.any_whitespace))
        unknown = set(spec) - _CONSTRAINT_FIELDS
        if unknown:
            raise bad_request(
                f"unknown {param} field(s) {sorted(unknown)}; allowed: {sorted(_CONSTRAINT_FIELDS)}", param
            )
        try:
            return StructuredOutputsParams(**spec)
        except StructuredOutputsError as exc:
            raise bad_request(str(exc), param) from exc

    def to_sampling_params(
        self, max_tokens: int | None, logprobs: int | None, prompt_logprobs: int | None
    ) -> SamplingParams:
        """Engine parameters; None means the field's default. Raises SamplingParamsError (a 400)."""
        return SamplingParams(
            n=self.n,
            temperature=_or(self.temperature, 1.0),
            top_p=_or(self.top_p, 1.0),
            top_k=_or(self.top_k, 0),
            min_p=_or(self.min_p, 0.0),
            seed=self.seed,
            presence_penalty=_or(self.presence_penalty, 0.0),
            frequency_penalty=_or(self.frequency_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0),
            logit_bias=self.logit_bias,
            allowed_token_ids=self.allowed_token_ids,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=bool(self.include_stop_str_in_output),
            ignore_eos=bool(self.ignore_eos),
            max_tokens=max_tokens,
            min_tokens=_or(self.min_tokens, 0),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=_or(self.skip_special_tokens, True),
            spaces_between_special_tokens=_or(self.spaces_between_special_tokens, True),
            structured_outputs=self.constraint(),
        )


_GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
_CONSTRAINT_FIELDS = {"json", "json_object", "regex", "choice", "grammar", "structural_tag", "any_whitespace"}


def _from_response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `response_format` as a constraint: json_object, or json_schema with its schema."""
    kind = fmt.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict | bool):
            raise bad_request(
                "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                "response_format",
            )
        # Strict or not, the schema is enforced while decoding: there is no looser mode to pick.
        return {"json": spec.get("schema", {})}
    if kind == "structural_tag":
        return {"structural_tag": fmt}  # xgrammar's format: {"type": "structural_tag", "format": ...}
    raise bad_request(
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
        "response_format",
    )


class CompletionRequest(SamplingRequest):
    prompt: Any = Field(...)
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    suffix: str | None = None
    add_special_tokens: bool | None = True


class ChatCompletionRequest(SamplingRequest):
    messages: list[Any] = Field(...)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    echo: bool | None = False
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None


class TokenizeRequest(_Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool | None = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int] = Field(...)


# Fields that change the result and that we do not implement; a value other than "unset" is a 400.
_UNSUPPORTED = {
    "suffix": "suffix (insertion) is not supported",
    "truncate_prompt_tokens": "truncate_prompt_tokens is not supported",
    "use_beam_search": "beam search is not supported",
    "bad_words": "bad_words is not supported",
    "return_tokens_as_token_ids": "return_tokens_as_token_ids is not supported",
    "chat_template": "per-request chat templates are not accepted; start the server with --chat-template FILE",
    "audio": "audio output is not supported",
}


def reject_unsupported(data: dict[str, Any]) -> None:
    for name, message in _UNSUPPORTED.items():
        if data.get(name) not in (None, False, "", [], {}):
            raise bad_request(message, name)
    modalities = data.get("modalities")
    if modalities not in (None, ["text"]):
        raise bad_request(f"only the text modality is supported, got {modalities!r}", "modalities")


T = TypeVar("T", bound=BaseModel)


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what is wrong with it."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise bad_request(f"Content-Type must be application/json, got {content_type!r}")
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {_json_type(data)}")
    return data


def parse_body(model: type[T], data: dict[str, Any]) -> T:
    """Validate `data` against `model`; the first error becomes a 400 naming its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        paths = [_field_path(data, e["loc"]) for e in errors]
        path = max(paths, key=len)  # in a union, the member that got furthest says the most
        first = errors[paths.index(path)]
        param = ".".join(str(part) for part in path) or None
        if first["type"] == "missing":
            raise bad_request(f"{param}: field required", param) from None
        # A union (e.g. `stop`: string or list) reports one error per member: say them together.
        messages = dict.fromkeys(e["msg"] for e, p in zip(errors, paths) if p == path)
        message = " or ".join(m.removeprefix("Input should be ") if i else m for i, m in enumerate(messages))
        got = repr(first.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        raise bad_request(f"{param}: {message}, got {got}" if param else message, param) from None


def _field_path(data: Any, loc: tuple) -> tuple:
    """The part of a pydantic error location that names the input (drops union member tags)."""
    path, node = [], data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) or isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part] if isinstance(node, dict) or 0 <= part < len(node) else None
        elif isinstance(node, dict):
            path.append(part)  # a required field that is missing
            node = None
    return tuple(path)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _or(value, default):
    return default if value is None else value

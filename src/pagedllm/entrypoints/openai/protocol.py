"""Request bodies: OpenAI's fields plus vLLM's extras, parsed and validated at the boundary.

The models are also the API's contract: their JSON schemas (with the served model's limits
filled in by `openapi.py`) are what /openapi.json declares, so every rule a schema can state
lives here as a constraint, and types are strict (a string is not a number, 1 is not true).
Unknown fields are ignored. Fields we do not implement but that would change the result are
declared as accepting only "unset" and rejected with a 400 naming the field otherwise (see
`reject_unsupported`). Fields whose Python type stays loose (prompts, messages, tools) carry
the schema their hand-written validation enforces (`WithJsonSchema`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from pagedllm.entrypoints.openai.errors import bad_request
from pagedllm.sampling_params import SamplingParams
from pagedllm.structured_outputs_params import StructuredOutputsError, StructuredOutputsParams

MAX_LOGPROBS = 20  # as vLLM's default max_logprobs
MAX_N = 128
_SEED_MIN, _SEED_MAX = -(2**63), 2**63 - 1
# Bounds on what one request may ask for: each a 400 naming the field past it.
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_TOKEN_ID_LIST = 65536  # stop_token_ids, allowed_token_ids
MAX_LOGIT_BIAS = 4096  # entries
MAX_PROMPTS = 256  # prompts in one completions request
MAX_MESSAGES = 4096
MAX_TOOLS = 128
MAX_CHOICES = 4096  # guided_choice / structured_outputs.choice options
TOKEN_ID_KEY = r"^(0|[1-9][0-9]{0,9})$"  # a logit_bias key: a token id written in decimal
# An output constraint (a JSON schema, a regex, a grammar; all tools' parameter schemas
# together), as JSON text: compiling is bounded in time too, but a bigger one is a mistake.
MAX_CONSTRAINT_BYTES = 256 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


def _unsupported(what: str, off: str = "null"):
    """A field declared only so that the schema says it must stay unset (null or `off`)."""
    return Field(None, description=f"Not supported ({what}); only {off} is accepted.")


_NOTHING = Annotated[list[Any], Field(max_length=0)]  # an empty list: the same as unset


StopStrings = (
    Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]
    | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_STRING_CHARS)]],
        Field(max_length=MAX_STOP_STRINGS),
    ]
)
TokenId = Annotated[int, Field(ge=0)]
NonEmpty = Annotated[str, Field(min_length=1)]
Choices = Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_CHOICES)]
Probability = Annotated[float, Field(ge=0, le=1)]

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["text", "input_text"]}, "text": {"type": "string"}},
}
_TOOL_CALL_EXAMPLE = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
}
MESSAGE_SCHEMA = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {
            "type": "string",
            "description": "system, developer, user, assistant, tool, or any role the chat template knows",
        },
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": _TEXT_PART},
                {"type": "null"},
            ]
        },
        # Passed to the chat template as they are (the server checks only role and content).
        "name": {"description": "the participant's name"},
        "tool_calls": {"description": "an assistant turn's calls", "examples": [[_TOOL_CALL_EXAMPLE]]},
        "tool_call_id": {"description": "which call a tool turn answers"},
        "reasoning_content": {"description": "an assistant turn's reasoning"},
    },
}
FUNCTION_NAME = r"^[A-Za-z0-9_.:-]{1,64}$"
TOOL_SCHEMA = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": FUNCTION_NAME},
                "description": {"description": "passed to the chat template"},
                "parameters": {"type": "object", "description": "a JSON schema for the arguments"},
                "strict": {"description": "ignored: the arguments always follow the schema"},
            },
        },
    },
}
TOOL_CHOICE_SCHEMA = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "pattern": FUNCTION_NAME}},
                },
            },
        },
        {"type": "null"},
    ]
}


class StreamOptions(_Body):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class JsonSchemaFormat(_Body):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class StructuralTagFormat(_Body):
    """xgrammar's structural tag: {"type": "structural_tag", "format": {...}} (or its older fields)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)
    type: Literal["structural_tag"]


# OpenAI's `response_format`: text, json_object, json_schema (and xgrammar's structural_tag).
ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaResponseFormat | StructuralTagFormat,
    Field(discriminator="type"),
]


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: exactly one constraint (checked when the request is read)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    json_: dict[str, Any] | bool | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: NonEmpty | None = None
    choice: Choices | None = None
    grammar: NonEmpty | None = None
    structural_tag: dict[str, Any] | str | None = None
    any_whitespace: bool | None = None


class SamplingRequest(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = Field(None, description="the served model's name (may be left out)")
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    stop: StopStrings | None = None
    seed: int | None = Field(None, ge=_SEED_MIN, le=_SEED_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: (
        Annotated[
            dict[Annotated[str, Field(pattern=TOKEN_ID_KEY)], Annotated[float, Field(ge=-100, le=100)]],
            Field(max_length=MAX_LOGIT_BIAS),
            # pydantic writes the key rule as patternProperties, which lets other keys through.
            WithJsonSchema(
                {
                    "type": "object",
                    "maxProperties": MAX_LOGIT_BIAS,
                    "propertyNames": {"pattern": TOKEN_ID_KEY},
                    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                }
            ),
        ]
        | None
    ) = Field(None, description="token id (in decimal) -> bias added to its logit")
    user: str | None = None
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1, description="-1 or 0: off")
    min_p: Probability | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_TOKEN_ID_LIST)] | None = None
    allowed_token_ids: Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKEN_ID_LIST)] | None = (
        None
    )
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(0, ge=0, description="at most max_tokens")
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    spaces_between_special_tokens: bool | None = True
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    cache_salt: str | None = Field(None, min_length=1)
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="must equal n")
    response_format: ResponseFormat | None = None
    # Constrained decoding (vLLM's names): one of json / json_object / regex / choice / grammar /
    # structural_tag, plus any_whitespace; or the older guided_* fields.
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: NonEmpty | None = None
    guided_choice: Choices | None = None
    guided_grammar: NonEmpty | None = None
    # JSON with free whitespace instead of compact (opt-in: small models loop in whitespace).
    any_whitespace: bool | None = None
    # Declared so that the schema says they must stay unset (reject_unsupported says why).
    truncate_prompt_tokens: None = _unsupported("truncation")
    use_beam_search: Literal[False] | None = _unsupported("beam search", "null or false")
    bad_words: _NOTHING | None = _unsupported("bad_words", "null or []")
    return_tokens_as_token_ids: Literal[False] | None = _unsupported(
        "return_tokens_as_token_ids", "null or false"
    )

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
        if fmt is not None and fmt.type != "text":
            sources.append(("response_format", _from_response_format(fmt)))
        if self.structured_outputs is not None:
            spec = self.structured_outputs.model_dump(by_alias=True, exclude_none=True)
            sources.append(("structured_outputs", spec))
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
        for kind in ("json", "grammar", "regex", "structural_tag"):
            check_constraint_size(spec.get(kind), param)
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


def _from_response_format(fmt) -> dict[str, Any]:
    """OpenAI's `response_format` as a constraint: json_object, or json_schema with its schema."""
    if fmt.type == "json_object":
        return {"json_object": True}
    if fmt.type == "json_schema":
        # Strict or not, the schema is enforced while decoding: there is no looser mode to pick.
        schema = fmt.json_schema.schema_
        return {"json": {} if schema is None else schema}
    # structural_tag: xgrammar's format, {"type": "structural_tag", "format": ...}
    return {"structural_tag": fmt.model_dump(exclude_none=True)}


_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
PROMPT_SCHEMA = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PROMPTS,
            "items": {"type": "string", "minLength": 1},
        },
        _TOKEN_IDS,
        {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": _TOKEN_IDS},
    ],
    "description": "a string, a list of strings, a list of token ids, or a list of token-id lists",
}


class CompletionRequest(SamplingRequest):
    prompt: Annotated[Any, WithJsonSchema(PROMPT_SCHEMA)] = Field(...)
    max_tokens: int | None = Field(16, ge=0, description="0 only with echo")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    suffix: Literal[""] | None = _unsupported("insertion", 'null or ""')
    add_special_tokens: bool | None = True


Messages = Annotated[
    list[Any],
    Field(min_length=1, max_length=MAX_MESSAGES),
    WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_MESSAGES, "items": MESSAGE_SCHEMA}),
]
Tools = Annotated[
    list[Any],
    Field(max_length=MAX_TOOLS),
    WithJsonSchema({"type": "array", "maxItems": MAX_TOOLS, "items": TOOL_SCHEMA}),
]


class ChatCompletionRequest(SamplingRequest):
    messages: Messages = Field(...)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="needs logprobs: true")
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    echo: bool | None = False
    tools: Tools | None = None
    tool_choice: Annotated[Any, WithJsonSchema(TOOL_CHOICE_SCHEMA)] = None
    parallel_tool_calls: bool | None = None
    functions: _NOTHING | None = _unsupported("the legacy functions field; send tools", "null or []")
    chat_template: Literal[""] | None = _unsupported(
        "per-request chat templates; start the server with --chat-template", 'null or ""'
    )
    audio: None = _unsupported("audio output")
    modalities: Annotated[list[Literal["text"]], Field(min_length=1, max_length=1)] | None = None


def check_constraint_size(value: Any, param: str) -> None:
    """A 400 when an output constraint is longer than MAX_CONSTRAINT_BYTES as JSON text."""
    if value is None:
        return
    size = len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())
    if size > MAX_CONSTRAINT_BYTES:
        raise bad_request(
            f"the output constraint in {param} is {size} bytes as JSON; at most {MAX_CONSTRAINT_BYTES}",
            param,
        )


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


class TokenizeRequest(_Body):
    """Exactly one of `prompt` and `messages`."""

    model: str | None = None
    # Not nullable (null is neither form), so without a schema default.
    prompt: str = Field(
        None, description="text to tokenize (or give messages)", json_schema_extra=_no_default
    )
    messages: Messages = Field(
        None,
        description="a conversation to render and tokenize (or give prompt)",
        json_schema_extra=_no_default,
    )
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool | None = False


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[TokenId] = Field(...)


# Fields that change the result and that we do not implement: each may only be left unset, or
# given its "off" value of the right JSON type; anything else is a 400 saying why.
_UNSUPPORTED = {
    "suffix": ("suffix (insertion) is not supported", ""),
    "truncate_prompt_tokens": ("truncate_prompt_tokens is not supported", None),
    "use_beam_search": ("beam search is not supported", False),
    "bad_words": ("bad_words is not supported", []),
    "return_tokens_as_token_ids": ("return_tokens_as_token_ids is not supported", False),
    "chat_template": (
        "per-request chat templates are not accepted; start the server with --chat-template FILE",
        "",
    ),
    "functions": ("the legacy 'functions' field is not supported; send 'tools'", []),
    "audio": ("audio output is not supported", None),
}


def reject_unsupported(data: dict[str, Any]) -> None:
    for name, (message, off) in _UNSUPPORTED.items():
        value = data.get(name)
        # type() as well as ==: 0 == False and 0.0 == 0, but neither is what the field says.
        if value is not None and not (type(value) is type(off) and value == off):
            raise bad_request(message, name)
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise bad_request(f"only the text modality is supported, got {modalities!r}", "modalities")


def _or(value, default):
    return default if value is None else value

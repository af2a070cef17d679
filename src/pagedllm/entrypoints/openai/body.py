"""Reading a request body: the JSON object it must be, then a model's validation of it, each
failure a 400 naming the field (and integral JSON numbers read as integers, as JSON Schema
counts them)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from pagedllm.entrypoints.openai.errors import bad_request

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
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_parse_number)
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
        if path[:1] == ("logit_bias",) and first["type"] == "string_pattern_mismatch":
            raise bad_request(
                f"logit_bias maps token ids (written in decimal) to biases, got the key {path[1]!r}",
                "logit_bias",
            ) from None
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


def _parse_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent: an int when its value is whole, as JSON Schema
    counts it (273.0 is an integer there), so that integer fields accept it; else a float."""
    value = float(text)
    if value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )

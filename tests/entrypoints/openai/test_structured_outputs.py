"""Structured outputs through the official openai SDK against `pagedllm serve` on the default
model (SmolLM2-135M, float32): every constrained output must parse and validate."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import instructor
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
ASK = "Describe a person as JSON."

# A dozen schemas: nested objects, bounded arrays, enums, integer ranges, anyOf, bounded strings.
# Strings and numbers are bounded so that a finished output can always validate.
SHORT = {"type": "string", "minLength": 1, "maxLength": 12}
SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {"first": SHORT, "last": SHORT},
                "required": ["first", "last"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["person", "active"],
    },
    "bounded_array": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3}},
        "required": ["tags"],
    },
    "int_range": {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": -5, "maximum": 5}},
        "required": ["score"],
    },
    "any_of": {
        "type": "object",
        "properties": {
            "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}
        },
        "required": ["value"],
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}, "label": SHORT},
                    "required": ["id", "label"],
                },
                "minItems": 1,
                "maxItems": 2,
            }
        },
        "required": ["items"],
    },
    "const": {
        "type": "object",
        "properties": {"kind": {"const": "point"}, "x": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["kind", "x"],
    },
    "string_pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
        "required": ["code"],
    },
    "defs_ref": {
        "type": "object",
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["x"],
            }
        },
        "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"],
    },
    "nullable": {
        "type": "object",
        "properties": {"note": {"anyOf": [SHORT, {"type": "null"}]}},
        "required": ["note"],
    },
    "top_level_array": {"type": "array", "items": {"enum": ["yes", "no"]}, "minItems": 2, "maxItems": 4},
}


def _chat(client, temperature: float, max_tokens: int = 200, **kwargs):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": ASK}],
        max_tokens=max_tokens,
        temperature=temperature,
        seed=0,
        **kwargs,
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schemas_validate(client, temperature):
    def run(item):
        name, schema = item
        out = _chat(
            client,
            temperature,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            },
        )
        return name, schema, out.choices[0]

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        results = list(pool.map(run, SCHEMAS.items()))
    lengths = []
    for name, schema, choice in results:
        if choice.finish_reason == "length":
            lengths.append(name)  # truncated honestly; only finished outputs must validate
            continue
        assert choice.finish_reason == "stop", (name, choice.finish_reason)
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert len(lengths) <= 2, f"too many truncated outputs: {lengths}"


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    hobbies: list[str] = Field(max_length=3)


def test_sdk_parse_returns_a_typed_object(client):
    out = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person with two hobbies."}],
        response_format=Person,
        temperature=0,
        max_tokens=200,
    )
    person = out.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120


def test_json_object_is_a_compact_object(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object with the keys name and age."}],
        max_tokens=100,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert out.choices[0].finish_reason == "stop"
    text = out.choices[0].message.content
    assert isinstance(json.loads(text), dict)
    assert "\n" not in text and "  " not in text  # compact whitespace by default


def test_regex_choice_grammar_and_guided_aliases(client):
    def complete(**extra):
        return client.completions.create(
            model=MODEL, prompt="The answer is", max_tokens=30, temperature=1.0, seed=3, extra_body=extra
        ).choices[0]

    regex = r"[A-Z][a-z]{2,6} [0-9]{1,3}"
    for out in (complete(structured_outputs={"regex": regex}), complete(guided_regex=regex)):
        assert re.fullmatch(regex, out.text) and out.finish_reason == "stop", out.text
    choices = ["alpha", "beta", "gamma delta"]
    for out in (complete(structured_outputs={"choice": choices}), complete(guided_choice=choices)):
        assert out.text in choices and out.finish_reason == "stop"
    grammar = 'root ::= "(" digit ("+" digit)* ")"\ndigit ::= [0-9]'
    for out in (complete(structured_outputs={"grammar": grammar}), complete(guided_grammar=grammar)):
        assert re.fullmatch(r"\([0-9](\+[0-9])*\)", out.text) or out.finish_reason == "length", out.text
    schema = SCHEMAS["enum"]
    out = complete(guided_json=schema)
    jsonschema.validate(json.loads(out.text), schema)


def test_truncation_is_reported_as_length(client):
    out = _chat(client, 1.0, max_tokens=3, response_format={"type": "json_object"})
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        ({"structured_outputs": {"regex": "("}}, "structured_outputs", "invalid regex"),
        ({"guided_grammar": "root ::= "}, "guided_grammar", "invalid grammar"),
        ({"guided_json": {"type": "object", "not": {"type": "string"}}}, "guided_json", "'not'"),
        (
            {"structured_outputs": {"json": {"type": "string", "multipleOf": 3}}},
            "structured_outputs",
            "multipleOf",
        ),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "not several"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs", "choice"),
        ({"structured_outputs": {"jsonn": {}}}, "structured_outputs", "jsonn"),
    ],
)
def test_invalid_constraints_are_400s_naming_the_field(server, extra, param, needle):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, **extra}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    # The field, or the part of it that is wrong (response_format.json_schema, ...).
    assert needle in error["message"] and error["param"].split(".")[0] in (param, "structured_outputs"), error


def test_grammar_metrics_are_exported(client, server):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 3}},
        "required": ["n"],
    }
    for _ in range(2):
        _chat(
            client,
            0.0,
            max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "m", "schema": schema}},
        )
    text = httpx.get(f"{server.url}/metrics").text
    hits = float(re.search(r"^pagedllm:grammar_cache_hits_total\{[^}]*\} (\S+)$", text, re.M).group(1))
    assert hits >= 1
    assert re.search(r"^pagedllm:grammar_compile_seconds_count\{[^}]*\} [1-9]", text, re.M)


def test_instructor_gets_typed_results(server):
    raw = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    client = instructor.from_openai(raw, mode=instructor.Mode.JSON_SCHEMA)
    person = client.chat.completions.create(
        model=MODEL,
        response_model=Person,
        messages=[{"role": "user", "content": "Invent a person."}],
        temperature=0,
        max_tokens=200,
        max_retries=0,
    )
    assert isinstance(person, Person)

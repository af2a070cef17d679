"""Tool calling through the official openai SDK and real agent libraries against
`pagedllm serve` on the default model (SmolLM2-135M, float32). Named and `required` choices are
forced by a grammar, so their arguments must validate against the tools' schemas."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99},
        "b": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["a", "b"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER,
        },
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Oslo? Also add 2 and 3."}]


def _create(client, temperature: float = 0.0, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=temperature, max_tokens=120, **kwargs
    )


def _check_calls(calls) -> None:
    assert calls, "no tool calls"
    assert len({c.id for c in calls}) == len(calls), "tool-call ids must be unique"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_choice_calls_that_function(client):
    out = _create(client, tool_choice={"type": "function", "function": {"name": "add"}})
    choice = out.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI reports a named choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and choice.message.content is None
    _check_calls([call])


def test_required_choice_calls_listed_functions(client):
    out = _create(client, tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    _check_calls(choice.message.tool_calls)
    single = _create(client, tool_choice="required", parallel_tool_calls=False)
    assert len(single.choices[0].message.tool_calls) == 1
    _check_calls(single.choices[0].message.tool_calls)


def test_parallel_calls_of_two_tools_at_temperature_1(client):
    finished, truncated = 0, 0
    for seed in range(6):
        out = _create(client, tool_choice="required", parallel_tool_calls=True, temperature=1.0, seed=seed)
        choice = out.choices[0]
        if choice.finish_reason == "length":  # an array of calls cut by max_tokens: not a call
            truncated += 1
            assert not choice.message.tool_calls
            continue
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message.tool_calls)
        finished += 1
    assert finished >= 3, f"{truncated} of 6 cut by max_tokens"


def _assemble(stream):
    calls: dict[int, dict] = {}
    finish = None
    content = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                assert delta.id and delta.type == "function" and delta.function.name, (
                    "first delta names the call"
                )
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and delta.function.name is None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish, content


@pytest.mark.parametrize(
    "tool_choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"]
)
def test_streamed_deltas_assemble_to_the_same_calls(client, tool_choice):
    whole = _create(client, tool_choice=tool_choice).choices[0]
    streamed, finish, content = _assemble(_create(client, tool_choice=tool_choice, stream=True))
    assert finish == whole.finish_reason and content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls
    ]


def test_a_conversation_with_tool_results_is_answered(client):
    messages = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees and snowing"},
        {"role": "tool", "tool_call_id": "call_2", "content": "5"},
    ]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40
    )
    choice = out.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert out.usage.prompt_tokens > 100  # the tools and the results reached the prompt


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among the tools",
        ),
        ({"tool_choice": "auto"}, "tool_choice", "--enable-auto-tool-choice"),
        ({}, "tool_choice", "--enable-auto-tool-choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": "str"}}],
                "tool_choice": "required",
            },
            "tools.0",
            "JSON schema",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "not": {}}},
                    }
                ],
                "tool_choice": "required",
            },
            "tools.0",
            "'not'",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}], "tool_choice": "required"},
            "tools.0",
            "function name",
        ),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "cannot be combined",
        ),
    ],
)
def test_bad_tool_requests_are_400s(server, extra, param, needle):
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 4, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and needle in error["message"], error


class Weather(BaseModel):
    city: str = Field(max_length=20)
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


def test_pydantic_ai_typed_output(server):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=f"{server.url}/v1", api_key="unused"))
    agent = Agent(model, output_type=Weather, retries=0, model_settings={"temperature": 0, "max_tokens": 120})
    result = agent.run_sync("What's the weather like in Oslo?")
    assert isinstance(result.output, Weather)


def test_instructor_tools_mode(server):
    import instructor

    raw = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    client = instructor.from_openai(raw, mode=instructor.Mode.TOOLS)
    weather = client.chat.completions.create(
        model=MODEL,
        response_model=Weather,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        temperature=0,
        max_tokens=120,
        max_retries=0,
    )
    assert isinstance(weather, Weather)


def test_langchain_bind_tools_with_a_named_tool(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=f"{server.url}/v1", api_key="unused", temperature=0, max_tokens=120
    )
    bound = llm.bind_tools([TOOLS[1]], tool_choice="add")
    message = bound.invoke("Add 2 and 3.")
    (call,) = message.tool_calls
    assert call["name"] == "add"
    jsonschema.validate(call["args"], ADD)

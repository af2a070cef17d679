"""Conversations with tools through SmolLM2's real tokenizer: its ChatML template cannot render
them, so the built-in tool template does; a template that can (or --chat-template) is used as is."""

from __future__ import annotations

import json

import pytest

from pagedllm.engine.tokenizer import load_tokenizer
from pagedllm.entrypoints.chat_utils import apply_chat_template
from pagedllm.model.loader.resolve import resolve_model

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALLED = [
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "4 degrees"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("smollm2-135m-instruct"))


def _render(tokenizer, conversation, **kwargs) -> str:
    return tokenizer.decode(apply_chat_template(tokenizer, conversation, **kwargs))


def test_tools_and_calls_are_rendered_with_the_builtin_template(tokenizer, caplog):
    text = _render(tokenizer, CALLED, tools=TOOLS)
    assert json.dumps(TOOLS[0]["function"]) in text  # the schema reaches the system turn
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<tool_response>\n4 degrees\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # Without tools the model's own template renders as before.
    plain = _render(tokenizer, [{"role": "user", "content": "hi"}])
    assert "SmolLM" in plain and "# Tools" not in plain


def test_a_given_template_overrides_the_builtin_one(tokenizer):
    template = (
        "{% for m in messages %}[{{ m.role }}]{{ m.content or '' }}{% endfor %}{{ tools | length }} tools"
    )
    text = _render(tokenizer, CALLED[:1], tools=TOOLS, chat_template=template)
    assert text == "[user]Weather in Oslo?1 tools"

"""A server with --reasoning-parser deepseek_r1 and auto tool choice (hermes), on the tiny random
model: its output never closes a <think> section, so all of it is reasoning, whole or streamed."""

from __future__ import annotations

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
BODY = dict(
    model="tiny", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, temperature=0, max_tokens=12
)


def test_reasoning_content_whole_and_streamed(reasoning_server):
    client = reasoning_server.client()
    whole = client.chat.completions.create(**BODY).choices[0]
    reasoning = whole.message.model_extra["reasoning_content"]
    assert reasoning and whole.message.content is None and not whole.message.tool_calls
    assert whole.finish_reason == "length"
    streamed, content, finish = "", "", None
    for chunk in client.chat.completions.create(**BODY, stream=True):
        for choice in chunk.choices:
            streamed += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert streamed.strip() == reasoning and content == "" and finish == "length"

"""Built-in chat templates that render tools, for models whose own template cannot.

SmolLM2's ChatML template knows nothing of tools and fails on an assistant turn whose content
is null (a turn that only called tools). For such a model the conversation is rendered with
the template here for its chat format: the tools' JSON schemas go into the system turn, calls
become `<tool_call>` blocks (the format the `hermes` parser reads back), tool results go back
to the model as `<tool_response>` blocks in a user turn. `--chat-template` overrides it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# A raw string: the "\n" escapes are Jinja's, inside its string literals.
CHATML_TOOLS_TEMPLATE = r"""
{%- if messages and messages[0].role == "system" -%}
  {%- set system_text = messages[0].content or "" -%}
  {%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system_text = "You are a helpful assistant." -%}
  {%- set rest = messages -%}
{%- endif -%}
<|im_start|>system
{{ system_text }}
{%- if tools -%}
{{ "\n\n# Tools\n\nYou can call functions to answer the user. Their signatures, as JSON schemas, "
   "are listed between <tools> and </tools>:\n<tools>" }}
{%- for tool in tools %}{{ "\n" + ((tool.function if tool.function is defined else tool) | tojson) }}{% endfor %}
{{- "\n</tools>\n\nTo call a function, write one block per call, each holding a JSON object with "
    "the function's name and its arguments:\n<tool_call>\n"
    '{"name": "function_name", "arguments": {"argument": "value"}}\n</tool_call>' }}
{%- endif %}<|im_end|>
{% for message in rest -%}
  {%- if message.role == "tool" -%}
    {%- if loop.first or rest[loop.index0 - 1].role != "tool" -%}<|im_start|>user
{% endif -%}
<tool_response>
{{ message.content }}
</tool_response>
{% if loop.last or rest[loop.index0 + 1].role != "tool" -%}<|im_end|>
{% endif -%}
  {%- elif message.role == "assistant" -%}<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif -%}
{%- for call in (message.tool_calls or []) -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- if message.content or not loop.first %}{{ "\n" }}{% endif -%}
<tool_call>
{"name": {{ fn.name | tojson }}, "arguments": {% if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif %}}
</tool_call>
{%- endfor %}<|im_end|>
{% else -%}<|im_start|>{{ message.role }}
{{ message.content or "" }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""


def renders_tools(template: str) -> bool:
    """Whether a chat template mentions tools and tool calls at all (else it drops them)."""
    return "tools" in template and "tool_calls" in template


_warned: set[str] = set()


def tool_template_for(template: str) -> str | None:
    """The built-in tool template for `template`'s chat format, or None if there is none."""
    if "<|im_start|>" in template:
        if "chatml" not in _warned:
            _warned.add("chatml")
            logger.info(
                "the model's chat template does not render tools; using pagedllm's built-in ChatML "
                "tool template for conversations with tools (--chat-template FILE overrides it)"
            )
        return CHATML_TOOLS_TEMPLATE
    return None

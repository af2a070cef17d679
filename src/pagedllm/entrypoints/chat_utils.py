"""Chat templates: conversations to prompt token ids, failing clearly without a template."""

from __future__ import annotations

from typing import Any

from pagedllm.entrypoints.tool_templates import renders_tools, tool_template_for


class ChatTemplateError(ValueError):
    """The model has no chat template (or it failed to render)."""

    param = "messages"


def uses_tools(conversation: list[dict[str, Any]], tools: list | None) -> bool:
    """Tools offered, or a turn that called tools or answers a call."""
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in conversation)


def apply_chat_template(
    tokenizer,
    conversation: list[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Render with the given or the model's template and tokenize (the template adds specials).

    A conversation with tools whose template cannot render them is rendered with the built-in
    tool template for the template's chat format (`tool_templates.py`); a template given
    explicitly (`chat_template`, `--chat-template`) is always used as it is."""
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ChatTemplateError(
            "this model has no chat template; pass chat_template= (or --chat-template FILE), "
            "or use plain completions"
        )
    if chat_template is None and uses_tools(conversation, tools) and not renders_tools(template):
        fallback = tool_template_for(template)
        if fallback is None:
            raise ChatTemplateError(
                "this model's chat template cannot render tools or tool calls and there is no "
                "built-in one for its chat format; pass --chat-template FILE with one that can"
            )
        template = fallback
    extra = dict(chat_template_kwargs or {})
    if tools:
        extra["tools"] = tools
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be true")
    try:
        text = tokenizer.apply_chat_template(
            conversation,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **extra,
        )
    except Exception as exc:  # jinja errors carry the template's own message
        raise ChatTemplateError(f"chat template failed to render: {exc}") from exc
    return tokenizer(text, add_special_tokens=False).input_ids

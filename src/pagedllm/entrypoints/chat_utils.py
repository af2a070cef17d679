"""Chat templates: conversations to prompt token ids, failing clearly without a template."""

from __future__ import annotations

from typing import Any


class ChatTemplateError(ValueError):
    """The model has no chat template (or it failed to render)."""

    param = "messages"


def apply_chat_template(
    tokenizer,
    conversation: list[dict[str, Any]],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """Render with the given or the model's template and tokenize (the template adds specials)."""
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ChatTemplateError(
            "this model has no chat template; pass chat_template= (or --chat-template FILE), "
            "or use plain completions"
        )
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be true")
    try:
        text = tokenizer.apply_chat_template(
            conversation,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            **(chat_template_kwargs or {}),
        )
    except Exception as exc:  # jinja errors carry the template's own message
        raise ChatTemplateError(f"chat template failed to render: {exc}") from exc
    return tokenizer(text, add_special_tokens=False).input_ids

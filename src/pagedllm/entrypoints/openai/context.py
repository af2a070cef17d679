"""What every endpoint needs: the engine, the served model's name and limits, usage records."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from pagedllm.engine.async_llm import AsyncLLM
from pagedllm.engine.output_processor import TokenTexts
from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.request_guard import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH


@dataclass
class ServingContext:
    llm: AsyncLLM
    served_model_name: str
    model_root: str
    api_key: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    # Tool calling: `auto` choice allowed, and how free output is parsed into calls.
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    # Moves <think> sections into reasoning_content.
    reasoning_parser: str | None = None
    # Transport limits (request_guard) and whether /metrics is behind the API key too.
    max_request_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    metrics_require_api_key: bool = False
    # The chat playground and engine view at / (--no-web-console: off).
    web_console: bool = True
    # Set by the first SIGTERM/SIGINT: not ready, new API requests refused (lifecycle.py).
    draining: bool = False

    def __post_init__(self) -> None:
        self.token_text = TokenTexts(self.tokenizer)

    @property
    def tokenizer(self):
        return self.llm.engine.tokenizer

    @property
    def chat_template(self) -> str | None:
        """The template given with --chat-template (used as is), or None for the model's own."""
        return self.llm.engine.config.chat_template

    @property
    def max_model_len(self) -> int:
        return self.llm.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.llm.engine.model_config.vocab_size

    def check_model(self, name: str | None) -> None:
        """A request may name the served model or leave `model` out; anything else is a 404."""
        if name not in (None, "", self.served_model_name):
            raise OpenAIError(
                404,
                f"The model `{name}` does not exist; this server serves `{self.served_model_name}`",
                param="model",
                code="model_not_found",
            )

    def model_card(self) -> dict:
        return {
            "id": self.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "pagedllm",
            "root": self.model_root,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [],
        }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }

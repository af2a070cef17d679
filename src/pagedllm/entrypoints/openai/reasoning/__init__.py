"""Reasoning parsers: split a thinking model's output into its reasoning and its answer."""

from __future__ import annotations

from pagedllm.entrypoints.openai.reasoning.base import ReasoningParser
from pagedllm.entrypoints.openai.reasoning.deepseek_r1 import DeepSeekR1ReasoningParser
from pagedllm.entrypoints.openai.reasoning.qwen3 import Qwen3ReasoningParser

REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    """A parser by its `--reasoning-parser` name; ValueError names the valid ones."""
    try:
        parser = REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r}; choose one of: {', '.join(sorted(REASONING_PARSERS))}"
        ) from None
    return parser()


__all__ = ["REASONING_PARSERS", "ReasoningParser", "get_reasoning_parser"]

"""Tool-call parsers: each reads one model family's tool-call wire format out of generated text."""

from __future__ import annotations

from pagedllm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedllm.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from pagedllm.entrypoints.openai.tool_parsers.llama3_json import Llama3JsonToolParser
from pagedllm.entrypoints.openai.tool_parsers.mistral import MistralToolParser
from pagedllm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser
    for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser, PythonicToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    """A parser by its `--tool-call-parser` name; ValueError names the valid ones."""
    try:
        parser = TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; choose one of: {', '.join(sorted(TOOL_PARSERS))}"
        ) from None
    return parser()


__all__ = ["TOOL_PARSERS", "ToolParser", "get_tool_parser"]

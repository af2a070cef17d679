"""What a request asks its output to conform to: a JSON schema, any JSON, a regex, a choice, a
grammar or a structural tag (exactly one), named as vLLM names them.

Plain data (no xgrammar): the front end validates and compiles it, the engine core compiles it
again for the matchers its worker keeps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KINDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


class StructuredOutputsError(ValueError):
    """An unusable constraint; `param` names the request field to blame."""

    def __init__(self, message: str, param: str = "structured_outputs"):
        super().__init__(message)
        self.param = param


@dataclass
class StructuredOutputsParams:
    """Exactly one of `json` (a JSON schema, as a dict or its text), `json_object` (any JSON
    object), `regex`, `choice` (one of these strings), `grammar` (EBNF) or `structural_tag`.

    JSON may contain only compact whitespace (one space after `:` and `,`, none elsewhere)
    unless `any_whitespace` is set: free whitespace lets a small model loop in spaces and
    newlines until `max_tokens`.
    """

    json: str | dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    structural_tag: str | dict[str, Any] | None = None
    any_whitespace: bool = False
    # The constraint starts once the output ends with these token ids (a reasoning model's
    # `</think>`): what the model thinks before it is free text.
    starts_after: list[int] | None = None

    def __post_init__(self) -> None:
        # Stored as text: the grammar caches key on it, and it crosses process boundaries as is.
        if isinstance(self.json, dict) or self.json is True:  # `true`: the schema any JSON meets
            self.json = json.dumps(self.json, sort_keys=True)
        if isinstance(self.structural_tag, dict):
            self.structural_tag = json.dumps(self.structural_tag, sort_keys=True)
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise StructuredOutputsError(
                f"structured outputs need exactly one of {', '.join(KINDS)}; got "
                + (", ".join(given) if given else "none")
            )
        if self.json is not None:
            try:
                schema = json.loads(self.json)
            except json.JSONDecodeError as exc:
                raise StructuredOutputsError(f"the JSON schema is not valid JSON: {exc}") from exc
            if not isinstance(schema, dict | bool):
                raise StructuredOutputsError("a JSON schema is an object (or true/false)")
        if self.choice is not None and (
            not self.choice or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise StructuredOutputsError("choice must be a non-empty list of non-empty strings")
        if self.starts_after is not None and (
            not self.starts_after or not all(isinstance(t, int) and t >= 0 for t in self.starts_after)
        ):
            raise StructuredOutputsError("starts_after must be a non-empty list of token ids")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise StructuredOutputsError(f"{name} must be a non-empty string")

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    @property
    def key(self) -> tuple:
        """What identifies the compiled grammar (the cache key)."""
        value = getattr(self, self.kind)
        if isinstance(value, list):
            value = tuple(value)
        return (self.kind, value, self.any_whitespace)

"""Compiled grammars sent to other processes (tensor-parallel workers).

xgrammar's compiled grammars do not pickle; they serialize to JSON, and deserializing needs the
tokenizer's info, which is large (megabytes for a 262k vocabulary) and the same for every
grammar of a model. So the sender ships the tokenizer info once, the first time it meets it,
and every grammar as its JSON; the receiver keeps the last tokenizer info it was sent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SerializedGrammar:
    """A compiled grammar as JSON; `tokenizer_info` only when it differs from the last sent."""

    grammar_json: str
    tokenizer_info_json: str | None


class GrammarSender:
    """Turns compiled grammars into `SerializedGrammar`s (see the module docstring)."""

    def __init__(self):
        self._sent_info: str | None = None

    def pack(self, grammar) -> SerializedGrammar:
        info = grammar.tokenizer_info.serialize_json()
        new_info = None if info == self._sent_info else info
        self._sent_info = info
        return SerializedGrammar(grammar.serialize_json(), new_info)


class GrammarReceiver:
    """Rebuilds compiled grammars from `SerializedGrammar`s."""

    def __init__(self):
        self._info = None

    def unpack(self, serialized: SerializedGrammar):
        import xgrammar as xgr

        if serialized.tokenizer_info_json is not None:
            self._info = xgr.TokenizerInfo.deserialize_json(serialized.tokenizer_info_json)
        if self._info is None:
            raise RuntimeError("a serialized grammar arrived before any tokenizer info")
        return xgr.CompiledGrammar.deserialize_json(serialized.grammar_json, self._info)

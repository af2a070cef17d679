"""Engine logprobs ({token id: Logprob} per position) in the shapes OpenAI's two APIs use.

Completions: `{tokens, token_logprobs, top_logprobs: [{token text: logprob}], text_offset}`, where
each top dict holds the best k tokens plus the sampled one (so up to k + 1, as OpenAI documents).
Chat: `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}` with
exactly the best k in `top_logprobs`. Token texts are each token decoded on its own, as vLLM does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from pagedllm.outputs import Logprob, PositionLogprobs

# JSON has no -inf; vLLM reports impossible tokens with this floor too.
LOGPROB_FLOOR = -9999.0

TokenText = Callable[[int], str]


def clean(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def best(position: PositionLogprobs, k: int) -> list[Logprob]:
    """The entries ranked 1..k, best first."""
    ranked = [lp for lp in position.values() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda lp: lp.logprob, reverse=True)[:k]


def _text(token_id: int, logprob: Logprob | None, token_text: TokenText) -> str:
    if logprob is not None and logprob.decoded_token is not None:
        return logprob.decoded_token
    return token_text(token_id)


class CompletionLogprobs:
    """Accumulates the completions `logprobs` object; `text_offset` runs on across calls."""

    def __init__(self, num_top: int, token_text: TokenText, offset: int = 0):
        self.num_top = num_top
        self.token_text = token_text
        self.offset = offset

    def build(
        self, token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None]
    ) -> dict[str, list]:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for token_id, position in zip(token_ids, positions):
            chosen = position.get(token_id) if position is not None else None
            text = _text(token_id, chosen, self.token_text)
            tokens.append(text)
            text_offset.append(self.offset)
            self.offset += len(text)
            if position is None:  # the first prompt token has no logprob
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(clean(chosen.logprob) if chosen is not None else None)
            entries = best(position, self.num_top) + ([chosen] if chosen is not None else [])
            entries.sort(key=lambda lp: lp.logprob, reverse=True)
            top_logprobs.append(
                {lp.decoded_token: clean(lp.logprob) for lp in entries if lp.decoded_token is not None}
            )
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }


def _chat_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": clean(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(
    token_ids: Sequence[int], positions: Sequence[PositionLogprobs], num_top: int, token_text: TokenText
) -> dict:
    """The chat `logprobs` object for generated tokens."""
    content = []
    for token_id, position in zip(token_ids, positions):
        chosen = position.get(token_id)
        text = _text(token_id, chosen, token_text)
        entry = _chat_entry(text, chosen.logprob if chosen is not None else LOGPROB_FLOOR)
        entry["top_logprobs"] = [
            _chat_entry(lp.decoded_token or "", lp.logprob) for lp in best(position, num_top)
        ]
        content.append(entry)
    return {"content": content, "refusal": None}


def prompt_logprobs_json(
    token_ids: Sequence[int], positions: Sequence[PositionLogprobs | None], num_top: int
) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per position None or {token id: {logprob, rank, decoded_token}}."""
    result: list[dict | None] = []
    for token_id, position in zip(token_ids, positions):
        if position is None:
            result.append(None)
            continue
        keep = {id(lp) for lp in best(position, num_top)}
        result.append(
            {
                str(tid): {"logprob": clean(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
                for tid, lp in position.items()
                if tid == token_id or id(lp) in keep
            }
        )
    return result

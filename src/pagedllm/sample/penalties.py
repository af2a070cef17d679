"""Presence, frequency and repetition penalties, applied to the whole batch at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PenaltyTensors:
    """Per-row penalty values and the token ids they look at.

    Id tensors are right-padded with `vocab_size`, an id that lands in a scratch
    column and is dropped, so padding never counts as a real token.
    """

    presence: torch.Tensor  # [R] float32, 0 = neutral
    frequency: torch.Tensor  # [R] float32, 0 = neutral
    repetition: torch.Tensor  # [R] float32, 1 = neutral
    prompt_ids: torch.Tensor  # [R, Lp] int64, padded with vocab_size
    output_ids: torch.Tensor  # [R, Lo] int64, padded with vocab_size
    any_repetition: bool = True  # False skips the prompt/output "seen" mask entirely


def pad_token_ids(rows: list[list[int]], pad_id: int, device: torch.device | str) -> torch.Tensor:
    """Right-pad lists of ids into one [R, max_len] int64 tensor (at least one column)."""
    width = max(1, max((len(r) for r in rows), default=0))
    flat: list[int] = []
    for ids in rows:
        flat.extend(ids)
        flat.extend([pad_id] * (width - len(ids)))
    return torch.tensor(flat, dtype=torch.long).view(len(rows), width).to(device)


def token_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each vocabulary id occurs per row of a padded id tensor: [R, V] int32."""
    counts = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.int32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, pen: PenaltyTensors) -> torch.Tensor:
    """Penalise `logits [R, V]` in place and return it.

    Repetition (HF/CTRL style) looks at prompt and output tokens: a seen token's positive
    logit is divided by the penalty, a negative one multiplied. Presence and frequency
    (OpenAI style) look at output tokens only: subtract `presence` once if the token
    occurred, and `frequency` times its count.
    """
    vocab_size = logits.shape[1]
    out_counts = token_counts(pen.output_ids, vocab_size)
    out_seen = out_counts > 0
    if pen.any_repetition:
        seen = (token_counts(pen.prompt_ids, vocab_size) > 0).logical_or_(out_seen)
        rep = pen.repetition.unsqueeze(1)
        penalised = torch.where(logits > 0, logits / rep, logits * rep)
        logits.copy_(torch.where(seen, penalised, logits))
    logits -= pen.frequency.unsqueeze(1) * out_counts
    logits -= pen.presence.unsqueeze(1) * out_seen
    return logits

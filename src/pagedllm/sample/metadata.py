"""Per-step sampling metadata: the batch's SamplingParams turned into a few tensors.

Each field is None when no row needs it, so the sampler skips that work entirely.
Building costs O(number of requests) Python work, plus list copies of token ids
only for rows that use penalties and of the ids named by logit_bias / allowed_token_ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedllm.sample.penalties import PenaltyTensors, pad_token_ids
from pagedllm.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingRow:
    """One request's row of the batch, as the model runner knows it.

    `token_ids` is the request's own list (prompt, then output), not a copy: the prompt and
    output parts are sliced only for the rows whose penalties read them, so a step costs
    O(requests) however long the sequences are.
    """

    params: SamplingParams
    token_ids: list[int]
    num_prompt_tokens: int
    generator: torch.Generator | None = None
    eos_token_id: int | None = None

    @classmethod
    def of(cls, params: SamplingParams, prompt: list[int], output: list[int], **kwargs) -> SamplingRow:
        """A row from separate prompt and output ids (copied into one list)."""
        return cls(params, [*prompt, *output], len(prompt), **kwargs)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


@dataclass(slots=True)
class TokenMask:
    """Sparse (row, token) pairs, with an optional value per pair."""

    rows: torch.Tensor  # [M] int64
    tokens: torch.Tensor  # [M] int64
    values: torch.Tensor | None = None  # [M] float32


@dataclass
class SamplingMetadata:
    """Everything the sampler needs for one step, batched."""

    num_rows: int
    all_greedy: bool
    all_random: bool
    greedy_mask: torch.Tensor | None = None  # [R] bool, only when the batch mixes both kinds
    temperature: torch.Tensor | None = None  # [R] float32 (1.0 on greedy rows); None if all greedy
    top_k: torch.Tensor | None = None  # [R] int64, vocab_size where disabled
    max_top_k: int | None = None  # the largest enabled k, known without a device sync
    top_p: torch.Tensor | None = None  # [R] float32, 1.0 where disabled
    min_p: torch.Tensor | None = None  # [R] float32, 0.0 where disabled
    generators: dict[int, torch.Generator] = field(default_factory=dict)  # seeded rows only
    default_generator: torch.Generator | None = None  # the shared draw of unseeded rows
    penalties: PenaltyTensors | None = None
    logit_bias: TokenMask | None = None  # additive values
    allowed_rows: torch.Tensor | None = None  # [A] row indices restricted to an allow-list
    allowed_mask: torch.Tensor | None = None  # [A, V] bool, True for tokens that stay allowed
    min_tokens_mask: TokenMask | None = None  # tokens banned until min_tokens is reached
    max_num_logprobs: int | None = None
    # Constrained decoding: the rows under a grammar and the packed allowed-token bitmask
    # ([R, ceil(V / 32)] int32, read at those rows); None when no row is constrained.
    grammar_rows: torch.Tensor | None = None
    grammar_bitmask: torch.Tensor | None = None


def build_sampling_metadata(
    rows: list[SamplingRow],
    vocab_size: int,
    device: torch.device | str,
    default_generator: torch.Generator | None = None,
) -> SamplingMetadata:
    """Collect the batch's parameters into tensors on `device`.

    `default_generator` (e.g. seeded by the engine seed) feeds the rows without their own
    generator; None means torch's global generator.
    """
    greedy = [r.params.greedy for r in rows]
    md = SamplingMetadata(
        num_rows=len(rows),
        all_greedy=all(greedy),
        all_random=not any(greedy),
        default_generator=default_generator,
    )
    if not md.all_greedy:
        _add_random_sampling(md, rows, greedy, vocab_size, device)
    md.penalties = _build_penalties(rows, vocab_size, device)
    md.logit_bias = _build_logit_bias(rows, device)
    _add_allowed_tokens(md, rows, vocab_size, device)
    md.min_tokens_mask = _build_min_tokens_mask(rows, device)
    asked = [r.params.logprobs for r in rows if r.params.logprobs is not None]
    md.max_num_logprobs = max(asked) if asked else None
    return md


def _add_random_sampling(
    md: SamplingMetadata, rows: list[SamplingRow], greedy: list[bool], vocab_size: int, device
) -> None:
    # Greedy rows get neutral values so that the random path can run over the whole batch.
    random_params = [r.params for r, g in zip(rows, greedy) if not g]
    md.temperature = _floats([1.0 if g else r.params.temperature for r, g in zip(rows, greedy)], device)
    if not md.all_random:
        md.greedy_mask = torch.tensor(greedy, dtype=torch.bool, device=device)
    if any(0 < p.top_k < vocab_size for p in random_params):
        ks = [
            r.params.top_k if not g and 0 < r.params.top_k < vocab_size else vocab_size
            for r, g in zip(rows, greedy)
        ]
        md.top_k = torch.tensor(ks, dtype=torch.long, device=device)
        md.max_top_k = max(k for k in ks if k < vocab_size)
    if any(p.top_p < 1.0 for p in random_params):
        md.top_p = _floats([1.0 if g else r.params.top_p for r, g in zip(rows, greedy)], device)
    if any(p.min_p > 0.0 for p in random_params):
        md.min_p = _floats([0.0 if g else r.params.min_p for r, g in zip(rows, greedy)], device)
    md.generators = {
        i: r.generator for i, (r, g) in enumerate(zip(rows, greedy)) if not g and r.generator is not None
    }


def _build_penalties(rows: list[SamplingRow], vocab_size: int, device) -> PenaltyTensors | None:
    def penalised(p: SamplingParams) -> bool:
        return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0

    flags = [penalised(r.params) for r in rows]
    if not any(flags):
        return None
    # Rows without penalties contribute no ids: their counts stay zero and cost nothing.
    needs_prompt = [f and r.params.repetition_penalty != 1.0 for r, f in zip(rows, flags)]
    return PenaltyTensors(
        presence=_floats([r.params.presence_penalty for r in rows], device),
        frequency=_floats([r.params.frequency_penalty for r in rows], device),
        repetition=_floats([r.params.repetition_penalty for r in rows], device),
        prompt_ids=pad_token_ids(
            [r.prompt_token_ids if n else [] for r, n in zip(rows, needs_prompt)], vocab_size, device
        ),
        output_ids=pad_token_ids(
            [r.output_token_ids if f else [] for r, f in zip(rows, flags)], vocab_size, device
        ),
        any_repetition=any(needs_prompt),
    )


def _build_logit_bias(rows: list[SamplingRow], device) -> TokenMask | None:
    row_ids: list[int] = []
    tokens: list[int] = []
    values: list[float] = []
    for i, r in enumerate(rows):
        if r.params.logit_bias:
            row_ids.extend([i] * len(r.params.logit_bias))
            tokens.extend(r.params.logit_bias.keys())
            values.extend(r.params.logit_bias.values())
    if not row_ids:
        return None
    return TokenMask(_longs(row_ids, device), _longs(tokens, device), _floats(values, device))


def _add_allowed_tokens(md: SamplingMetadata, rows: list[SamplingRow], vocab_size: int, device) -> None:
    restricted = [i for i, r in enumerate(rows) if r.params.allowed_token_ids]
    if not restricted:
        return
    local_rows: list[int] = []
    tokens: list[int] = []
    for local, i in enumerate(restricted):
        ids = rows[i].params.allowed_token_ids
        local_rows.extend([local] * len(ids))
        tokens.extend(ids)
    mask = torch.zeros(len(restricted), vocab_size, dtype=torch.bool, device=device)
    mask[_longs(local_rows, device), _longs(tokens, device)] = True
    md.allowed_rows = _longs(restricted, device)
    md.allowed_mask = mask


def _build_min_tokens_mask(rows: list[SamplingRow], device) -> TokenMask | None:
    # Like vLLM: until min_tokens outputs exist, EOS (unless ignore_eos) and every stop
    # token id are banned so that the request cannot end early.
    row_ids: list[int] = []
    tokens: list[int] = []
    for i, r in enumerate(rows):
        p = r.params
        if r.num_output_tokens >= p.min_tokens:
            continue
        banned = set(p._all_stop_token_ids) | set(p.stop_token_ids)
        if r.eos_token_id is not None and not p.ignore_eos:
            banned.add(r.eos_token_id)
        row_ids.extend([i] * len(banned))
        tokens.extend(banned)
    if not row_ids:
        return None
    return TokenMask(_longs(row_ids, device), _longs(tokens, device))


def _floats(values: list[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def _longs(values: list[int], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)

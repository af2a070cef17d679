"""Penalties against a plain per-token reference implementation."""

from __future__ import annotations

import torch

from pagedllm.sample.metadata import SamplingRow, build_sampling_metadata
from pagedllm.sample.penalties import pad_token_ids, token_counts
from pagedllm.sample.sampler import apply_logit_processors
from pagedllm.sampling_params import SamplingParams

VOCAB = 12


def reference_penalties(
    logits: list[float], prompt: list[int], output: list[int], p: SamplingParams
) -> list[float]:
    """Token by token, as HF (repetition) and OpenAI (presence, frequency) define them."""
    result = list(logits)
    for token in range(len(result)):
        if token in prompt or token in output:
            if result[token] > 0:
                result[token] /= p.repetition_penalty
            else:
                result[token] *= p.repetition_penalty
        count = output.count(token)
        result[token] -= p.frequency_penalty * count
        if count > 0:
            result[token] -= p.presence_penalty
    return result


def test_penalties_match_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, VOCAB, generator=gen) * 3
    cases = [
        (SamplingParams(repetition_penalty=1.3), [1, 2, 2], [3, 3, 4]),
        (SamplingParams(presence_penalty=0.7), [1, 5], [5, 6, 6, 6]),
        (SamplingParams(frequency_penalty=-0.4), [0], [7, 7, 8]),
        (SamplingParams(), [1, 2, 3], [4, 5]),  # neutral row in a penalised batch
        (
            SamplingParams(repetition_penalty=0.8, presence_penalty=1.5, frequency_penalty=0.5),
            [9, 10],
            [10, 11, 11],
        ),
    ]
    rows = [SamplingRow.of(p, prompt, out) for p, prompt, out in cases]
    processed = apply_logit_processors(logits, build_sampling_metadata(rows, VOCAB, "cpu"))
    for i, (p, prompt, out) in enumerate(cases):
        expected = reference_penalties(logits[i].tolist(), prompt, out, p)
        assert torch.allclose(processed[i], torch.tensor(expected), atol=1e-5), i


def test_no_penalty_tensors_when_all_neutral():
    rows = [SamplingRow.of(SamplingParams(), [1, 2], [3])]
    assert build_sampling_metadata(rows, VOCAB, "cpu").penalties is None


def test_presence_only_batch_skips_prompt_ids():
    rows = [SamplingRow.of(SamplingParams(presence_penalty=1.0), list(range(10)), [1])]
    pen = build_sampling_metadata(rows, VOCAB, "cpu").penalties
    assert not pen.any_repetition
    assert pen.prompt_ids.tolist() == [[VOCAB]]  # only padding: the prompt is not needed


def test_counts_ignore_padding():
    ids = pad_token_ids([[1, 1, 3], [], [2]], pad_id=5, device="cpu")
    assert ids.shape == (3, 3)
    counts = token_counts(ids, 5)
    assert counts.tolist() == [[0, 2, 0, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]

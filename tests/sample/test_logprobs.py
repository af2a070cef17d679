"""compute_token_logprobs: chosen token first, then the top-k, with the chosen token's rank."""

from __future__ import annotations

import pytest
import torch

from pagedllm.sample.logprobs import compute_token_logprobs


def test_values_ranks_and_top_entries():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 5, 49, 7, 7, 3])
    out = compute_token_logprobs(logits, targets, num_top=3)
    raw = torch.log_softmax(logits, -1)
    for i, t in enumerate(targets.tolist()):
        assert out.token_ids[i][0] == t
        assert out.logprobs[i][0] == pytest.approx(raw[i, t].item(), abs=1e-6)
        assert out.ranks[i] == sorted(raw[i].tolist(), reverse=True).index(raw[i, t].item()) + 1
        assert out.token_ids[i][1:] == raw[i].topk(3).indices.tolist()


def test_ties_share_the_best_rank():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert compute_token_logprobs(logits, torch.tensor([2]), 0).ranks == [1]
    assert compute_token_logprobs(logits, torch.tensor([0]), 0).ranks == [3]


def test_num_top_zero_gives_only_the_chosen_token():
    out = compute_token_logprobs(torch.zeros(2, 4), torch.tensor([1, 2]), 0)
    assert out.token_ids == [[1], [2]]
    assert out.logprobs == [[pytest.approx(-1.3862944)], [pytest.approx(-1.3862944)]]


def test_half_precision_logits_are_upcast():
    logits = torch.randn(2, 10).to(torch.bfloat16)
    out = compute_token_logprobs(logits, torch.tensor([0, 1]), 2)
    assert out.logprobs[0][0] == pytest.approx(torch.log_softmax(logits.float(), -1)[0, 0].item(), abs=1e-6)

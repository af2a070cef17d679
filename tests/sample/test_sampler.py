"""The sampler against simple references computed in the tests."""

from __future__ import annotations

import pytest
import torch

from pagedllm.sample.metadata import SamplingRow, build_sampling_metadata
from pagedllm.sample.sampler import Sampler, apply_logit_processors, apply_top_k_top_p
from pagedllm.sampling_params import SamplingParams

VOCAB = 8
sampler = Sampler()


def _rows(params: SamplingParams, n: int, **kw) -> list[SamplingRow]:
    return [SamplingRow.of(params, [0], [], **kw) for _ in range(n)]


def _draw(logits: torch.Tensor, params: SamplingParams, n: int = 20000, seed: int = 0) -> torch.Tensor:
    """n independent samples from one row of logits."""
    md = build_sampling_metadata(
        _rows(params, n), logits.shape[-1], "cpu", torch.Generator().manual_seed(seed)
    )
    return sampler(logits.expand(n, -1).contiguous(), md).sampled_token_ids


def _frequencies(samples: torch.Tensor, vocab: int = VOCAB) -> torch.Tensor:
    return torch.bincount(samples, minlength=vocab).float() / samples.numel()


def _nucleus(probs: list[float], p: float) -> set[int]:
    """Reference: the fewest most likely tokens whose mass reaches p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


LOGITS = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005]))


def test_greedy_is_argmax():
    logits = torch.randn(16, 1000, generator=torch.Generator().manual_seed(1))
    md = build_sampling_metadata(_rows(SamplingParams(temperature=0.0), 16), 1000, "cpu")
    assert md.all_greedy and md.temperature is None and md.top_k is None
    assert torch.equal(sampler(logits, md).sampled_token_ids, logits.argmax(-1))


def test_greedy_rows_in_a_mixed_batch_stay_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5, top_k=3)] * 3
    md = build_sampling_metadata([SamplingRow.of(p, [0], []) for p in params], 50, "cpu")
    out = sampler(logits, md).sampled_token_ids
    assert torch.equal(out[0::2], logits[0::2].argmax(-1))


def test_input_logits_are_not_modified():
    logits = torch.randn(4, 30)
    before = logits.clone()
    params = SamplingParams(temperature=0.7, top_p=0.5, presence_penalty=1.0, logit_bias={3: 2.0})
    sampler(logits, build_sampling_metadata([SamplingRow.of(params, [1, 2], [3])] * 4, 30, "cpu"))
    assert torch.equal(logits, before)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_temperature_matches_softmax(temperature):
    freq = _frequencies(_draw(LOGITS, SamplingParams(temperature=temperature), n=40000))
    expected = torch.softmax(LOGITS / temperature, -1)
    assert torch.allclose(freq, expected, atol=0.01)


def test_top_k_keeps_k_best_renormalised():
    freq = _frequencies(_draw(LOGITS, SamplingParams(top_k=3)))
    expected = torch.zeros(VOCAB)
    expected[:3] = torch.tensor([0.4, 0.25, 0.15]) / 0.8
    assert torch.allclose(freq, expected, atol=0.015)
    assert freq[3:].sum() == 0


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.7, 0.85, 0.92, 0.99])
def test_top_p_keeps_the_minimal_nucleus(top_p):
    probs = torch.softmax(LOGITS, -1).tolist()
    seen = set(_draw(LOGITS, SamplingParams(top_p=top_p)).unique().tolist())
    assert seen == _nucleus(probs, top_p)


def test_top_k_and_top_p_together():
    seen = set(_draw(LOGITS, SamplingParams(top_k=2, top_p=0.99)).unique().tolist())
    assert seen == {0, 1}
    seen = set(_draw(LOGITS, SamplingParams(top_k=5, top_p=0.7)).unique().tolist())
    assert seen == {0, 1, 2}


def test_min_p_drops_tokens_below_fraction_of_best():
    # Threshold 0.3 * 0.4 = 0.12 keeps tokens 0, 1, 2.
    freq = _frequencies(_draw(LOGITS, SamplingParams(min_p=0.3)))
    assert set(freq.nonzero().flatten().tolist()) == {0, 1, 2}
    assert torch.allclose(freq[:3], torch.tensor([0.4, 0.25, 0.15]) / 0.8, atol=0.015)


def test_filters_only_touch_their_own_rows():
    params = [SamplingParams(top_k=2), SamplingParams(), SamplingParams(top_p=0.5), SamplingParams(min_p=0.5)]
    md = build_sampling_metadata([SamplingRow.of(p, [0], []) for p in params], VOCAB, "cpu")
    logits = LOGITS.expand(4, -1).clone()
    apply_top_k_top_p(logits, md.top_k, md.top_p)
    finite = torch.isfinite(logits)
    assert finite.sum(-1).tolist() == [2, VOCAB, 2, VOCAB]


def test_top_k_fast_path_matches_sort_path():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 100, generator=gen)
    top_k = torch.tensor([1, 5, 100, 17, 60])
    fast, sorted_path = logits.clone(), logits.clone()
    apply_top_k_top_p(fast, top_k, None)
    apply_top_k_top_p(sorted_path, top_k, torch.ones(5))
    assert torch.equal(torch.isfinite(fast), torch.isfinite(sorted_path))
    assert torch.isfinite(fast).sum(-1).tolist() == top_k.tolist()


def _seeded_tokens(batch: list[tuple[SamplingParams, int | None]], logits: torch.Tensor, steps: int = 5):
    """Run `steps` sampling steps; row i uses a generator seeded with batch[i][1] (or none)."""
    gens = [torch.Generator().manual_seed(s) if s is not None else None for _, s in batch]
    rows = [SamplingRow.of(p, [0], [], generator=g) for (p, _), g in zip(batch, gens)]
    out = []
    for step in range(steps):
        md = build_sampling_metadata(rows, logits.shape[-1], "cpu")
        out.append(sampler(logits[: len(rows)] + step, md).sampled_token_ids)
    return torch.stack(out, 1)


def test_same_seed_gives_same_tokens_alone_and_in_a_batch():
    logits = torch.randn(1, 500, generator=torch.Generator().manual_seed(4)).expand(4, -1)
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)
    alone = _seeded_tokens([(seeded, 1234)], logits)[0]
    batch = [
        (SamplingParams(temperature=0.8), None),
        (SamplingParams(temperature=1.0, seed=7), 7),
        (seeded, 1234),
    ]
    in_batch = _seeded_tokens(batch + [(SamplingParams(temperature=0.0), None)], logits)[2]
    assert torch.equal(alone, in_batch)
    other_seed = _seeded_tokens([(seeded, 4321)], logits)[0]
    assert not torch.equal(alone, other_seed)


def test_logit_bias_is_added_to_its_row_only():
    logits = torch.zeros(2, VOCAB)
    rows = [
        SamplingRow.of(SamplingParams(temperature=0.0, logit_bias={5: 3.0, 1: -2.0}), [0], []),
        SamplingRow.of(SamplingParams(temperature=0.0), [0], []),
    ]
    processed = apply_logit_processors(logits, build_sampling_metadata(rows, VOCAB, "cpu"))
    expected = torch.zeros(2, VOCAB)
    expected[0, 5], expected[0, 1] = 3.0, -2.0
    assert torch.equal(processed, expected)
    assert sampler(logits, build_sampling_metadata(rows, VOCAB, "cpu")).sampled_token_ids[0] == 5


def test_allowed_token_ids_restrict_sampling():
    seen = set(_draw(LOGITS, SamplingParams(allowed_token_ids=[2, 6, 7]), n=5000).unique().tolist())
    assert seen == {2, 6, 7}
    rows = [SamplingRow.of(SamplingParams(temperature=0.0, allowed_token_ids=[6, 7]), [0], [])]
    assert (
        sampler(LOGITS.unsqueeze(0), build_sampling_metadata(rows, VOCAB, "cpu")).sampled_token_ids.item()
        == 6
    )


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    eos = 0
    params = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[1])
    logits = LOGITS.unsqueeze(0).expand(3, -1)
    rows = [
        SamplingRow.of(params, [5], [4, 4], eos_token_id=eos),  # 2 < 3 outputs: banned
        SamplingRow.of(params, [5], [4, 4, 4], eos_token_id=eos),  # reached
        SamplingRow.of(
            SamplingParams(temperature=0.0, min_tokens=3, ignore_eos=True), [5], [], eos_token_id=eos
        ),
    ]
    processed = apply_logit_processors(logits, build_sampling_metadata(rows, VOCAB, "cpu"))
    assert torch.isinf(processed[0, [0, 1]]).all() and torch.isfinite(processed[0, 2:]).all()
    assert torch.isfinite(processed[1]).all()
    assert torch.isfinite(processed[2]).all()  # ignore_eos: EOS is not a stop, nothing to ban
    assert sampler(logits, build_sampling_metadata(rows, VOCAB, "cpu")).sampled_token_ids.tolist() == [
        2,
        0,
        0,
    ]


def test_logprobs_are_raw_log_softmax_with_ranks():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    params = [
        SamplingParams(temperature=0.3, logprobs=2, presence_penalty=2.0, top_k=4),
        SamplingParams(temperature=2.0, logprobs=4, logit_bias={1: 50.0}),
        SamplingParams(temperature=0.0),
    ]
    rows = [SamplingRow.of(p, [3], [3, 3]) for p in params]
    md = build_sampling_metadata(rows, 40, "cpu")
    assert md.max_num_logprobs == 4
    out = sampler(logits, md)
    raw = torch.log_softmax(logits, -1)
    lp = out.logprobs
    for i in range(3):
        chosen = out.sampled_token_ids[i].item()
        assert lp.token_ids[i][0] == chosen
        assert lp.logprobs[i][0] == pytest.approx(raw[i, chosen].item(), abs=1e-6)
        assert lp.ranks[i] == int((raw[i] > raw[i, chosen]).sum()) + 1
        top = raw[i].topk(4)
        assert lp.token_ids[i][1:] == top.indices.tolist()
        assert lp.logprobs[i][1:] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert out.sampled_token_ids[1].item() == 1  # the bias decided the sample, not the logprobs


def test_no_logprobs_when_nobody_asks():
    md = build_sampling_metadata(_rows(SamplingParams(), 2), VOCAB, "cpu")
    assert md.max_num_logprobs is None
    assert sampler(LOGITS.expand(2, -1), md).logprobs is None


@pytest.mark.gpu
def test_full_feature_batch_on_cuda():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(6)).cuda()

    def run(batch):
        rows = [
            SamplingRow.of(p, [1, 2], [3], generator=torch.Generator("cuda").manual_seed(s) if s else None)
            for p, s in batch
        ]
        md = build_sampling_metadata(rows, 1000, "cuda", torch.Generator("cuda").manual_seed(0))
        return sampler(logits[: len(rows)], md)

    seeded = SamplingParams(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, seed=5, logprobs=3)
    alone = run([(seeded, 5)]).sampled_token_ids
    batch = [
        (SamplingParams(temperature=0.0, repetition_penalty=1.2), None),
        (SamplingParams(temperature=1.0, logit_bias={7: 1.0}, allowed_token_ids=list(range(100))), None),
        (seeded, 5),
    ]
    out = run(batch)
    assert out.sampled_token_ids[2] == alone[0]
    assert out.sampled_token_ids[1] < 100
    assert out.logprobs.token_ids[2][0] == alone[0].item()

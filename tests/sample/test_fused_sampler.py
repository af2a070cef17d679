"""The fused CPU sampling kernel (sample_tokens) and the sampler's use of it, every test on the
kernel build for this CPU and on the AVX2 build.

References: torch.argmax for greedy rows; for random rows the inverse CDF of softmax(x / T)
computed in float64 and the sampler's torch path (`Sampler.sample`), both for the same uniform
numbers. A row whose target u * total lies within float rounding of a CDF boundary may
legitimately go either way, so such rows are skipped (most rows must still be checked).
"""

from __future__ import annotations

import pytest
import torch

from pagedllm.ops import cpu_kernels
from pagedllm.ops.sampling import sample_tokens
from pagedllm.sample.metadata import SamplingRow, build_sampling_metadata
from pagedllm.sample.sampler import Sampler, draw_uniforms, fused_sampling_applies
from pagedllm.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels could not be built")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative distance of u * total to a CDF boundary below which a row is not compared: 10x the
# rounding of float32 exps (kernel: < 2e-7 relative each) summed over a row.
MARGIN = 2e-6
sampler = Sampler(sample_tokens)  # as the CPU platform builds it


@pytest.fixture(autouse=True)
def _on_both_builds(kernel_target):
    """Every test here runs once per kernel build (tests/conftest.py's kernel_target)."""


def fused(logits: torch.Tensor, temperature, uniform) -> torch.Tensor:
    rows = logits.shape[0]
    temperature = torch.as_tensor(temperature, dtype=torch.float32).expand(rows).contiguous()
    uniform = torch.as_tensor(uniform, dtype=torch.float32).expand(rows).contiguous()
    out = torch.full((rows,), -1, dtype=torch.long)
    cpu_kernels.op("sample_tokens")(out, logits, temperature, uniform)
    return out


def reference(logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor):
    """float64 inverse CDF: (token, relative distance of u * total to the nearest CDF boundary)."""
    probs = torch.softmax(logits.double() / temperature.double().unsqueeze(1), dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    target = uniform.double().unsqueeze(1) * total
    token = torch.searchsorted(cdf, target, right=True).clamp(max=logits.shape[1] - 1)
    upper = cdf.gather(1, token)
    lower = torch.where(token > 0, cdf.gather(1, (token - 1).clamp(min=0)), torch.zeros_like(upper))
    margin = torch.minimum(upper - target, target - lower) / total
    return token.squeeze(1), margin.squeeze(1)


def random_logits(rows: int, vocab: int, dtype: torch.dtype, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=gen) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 5, 16, 1000, 4099])
def test_greedy_is_torch_argmax_with_ties(dtype, vocab):
    logits = random_logits(64, vocab, dtype, seed=vocab)
    # Repeat each row's max at a later and a random position: the first one must win.
    top = logits.argmax(-1)
    gen = torch.Generator().manual_seed(1)
    for r in range(0, 64, 2):
        for c in (vocab - 1, int(torch.randint(vocab, (1,), generator=gen))):
            logits[r, c] = logits[r, top[r]]
    # Coarse values: many ties everywhere.
    logits[1::4] = logits[1::4].round()
    logits[3::4, : vocab // 2] = float("-inf")
    out = fused(logits, 0.0, 0.5)
    assert torch.equal(out, logits.argmax(-1))


def _metadata(params: list[SamplingParams], vocab: int, seed: int, seeds: dict[int, int] | None = None):
    """Metadata with the shared generator seeded by `seed` and rows `seeds` keys on their own."""
    seeds = seeds or {}
    rows = [
        SamplingRow.of(p, [0], [], generator=torch.Generator().manual_seed(seeds[i]) if i in seeds else None)
        for i, p in enumerate(params)
    ]
    return build_sampling_metadata(rows, vocab, "cpu", torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1000, 49155])
def test_random_rows_match_inverse_cdf_references(dtype, vocab):
    rows = 96
    logits = random_logits(rows, vocab, dtype, seed=7)
    gen = torch.Generator().manual_seed(3)
    temperature = torch.rand(rows, generator=gen) * 1.8 + 0.1
    uniform = torch.rand(rows, generator=gen)
    expected, margin = reference(logits, temperature, uniform)
    checked = margin > MARGIN
    assert checked.sum() >= 0.9 * rows
    assert torch.equal(fused(logits, temperature, uniform)[checked], expected[checked])

    # Through the sampler, against its torch path drawing the same uniform numbers.
    params = [SamplingParams(temperature=float(t)) for t in temperature]
    md = _metadata(params, vocab, seed=11)
    assert fused_sampling_applies(logits, md)
    ours = sampler(logits, md).sampled_token_ids
    torch_path = sampler.sample(logits.float().clone(), _metadata(params, vocab, seed=11))
    uniform = draw_uniforms(rows, {}, torch.Generator().manual_seed(11), "cpu")
    expected, margin = reference(logits, md.temperature, uniform)
    checked = margin > MARGIN
    assert checked.sum() >= 0.9 * rows
    assert torch.equal(ours[checked], expected[checked])
    assert torch.equal(torch_path[checked], expected[checked])


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_greedy_and_seeded_rows_match_the_torch_path(dtype):
    vocab, rows = 3001, 48
    logits = random_logits(rows, vocab, dtype, seed=5, scale=2.0)
    temps = [0.0, 1.0, 0.6, 0.0, 1.7, 0.3]
    params = [SamplingParams(temperature=temps[i % len(temps)]) for i in range(rows)]
    seeds = {i: 1000 + i for i in range(1, rows, 5) if params[i].temperature > 0}
    md = _metadata(params, vocab, seed=2, seeds=seeds)
    assert fused_sampling_applies(logits, md) and md.greedy_mask is not None
    ours = sampler(logits, md).sampled_token_ids
    torch_path = sampler.sample(logits.float().clone(), _metadata(params, vocab, seed=2, seeds=seeds))
    greedy = md.greedy_mask
    assert torch.equal(ours[greedy], logits[greedy].argmax(-1))
    assert torch.equal(torch_path[greedy], ours[greedy])
    fresh = _metadata(params, vocab, seed=2, seeds=seeds)
    uniform = draw_uniforms(rows, fresh.generators, fresh.default_generator, "cpu")
    temperature = torch.tensor([max(p.temperature, 1.0 if p.greedy else 0.0) for p in params])
    expected, margin = reference(logits, temperature, uniform)
    checked = (margin > MARGIN) & ~greedy
    assert checked.sum() >= 0.9 * (~greedy).sum()
    assert torch.equal(ours[checked], expected[checked])
    assert torch.equal(torch_path[checked], expected[checked])


def test_seeded_rows_are_batch_invariant():
    vocab = 2000
    logits = random_logits(8, vocab, torch.bfloat16, seed=9, scale=1.0)
    seeded = SamplingParams(temperature=1.0, seed=5)
    alone = sampler(logits[3:4], _metadata([seeded], vocab, seed=0, seeds={0: 5})).sampled_token_ids
    others = [SamplingParams(temperature=t) for t in (0.0, 1.0, 0.5)] + [seeded] + [SamplingParams()] * 4
    batch = sampler(logits, _metadata(others, vocab, seed=1, seeds={3: 5})).sampled_token_ids
    assert batch[3] == alone[0]
    # Another seed draws another token (for this row the odds of a collision are tiny).
    draws = {
        int(sampler(logits[3:4], _metadata([seeded], vocab, seed=0, seeds={0: s})).sampled_token_ids[0])
        for s in range(5, 15)
    }
    assert len(draws) > 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_frequencies_follow_softmax_at_temperature(dtype):
    # Small vocabulary: many draws of one row must reproduce softmax(x / T).
    base = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005]))
    logits, temperature, n = base.to(dtype), 0.7, 40000
    uniform = torch.rand(n, generator=torch.Generator().manual_seed(0))
    samples = fused(logits.expand(n, -1).contiguous(), temperature, uniform)
    freq = torch.bincount(samples, minlength=8).double() / n
    expected = torch.softmax(logits.double() / temperature, dim=-1)
    # ~5 standard deviations of the largest probability's estimate; another temperature is far off.
    bound = 5 * (0.25 / n) ** 0.5
    assert (freq - expected).abs().max() < bound
    for wrong in (0.6, 0.8):
        assert (torch.softmax(logits.double() / wrong, dim=-1) - expected).abs().max() > 3 * bound


def test_frequencies_over_a_vocabulary_of_many_blocks():
    # Mass spread over ~20 blocks of the kernel's partial sums, through the sampler (bf16 logits).
    vocab, n, temperature = 5000, 40000, 1.3
    row = random_logits(1, vocab, torch.bfloat16, seed=4, scale=3.0)
    md = _metadata([SamplingParams(temperature=temperature)] * n, vocab, seed=8)
    samples = sampler(row.expand(n, -1).contiguous(), md).sampled_token_ids
    # Compare the mass of 50 contiguous buckets of 100 tokens.
    freq = torch.bincount(samples, minlength=vocab).double().view(50, 100).sum(1) / n
    expected = torch.softmax(row[0].double() / temperature, dim=-1).view(50, 100).sum(1)
    chi2 = float(((freq - expected) ** 2 / expected).sum() * n)
    assert chi2 < 100  # 49 degrees of freedom: p < 1e-5 beyond 100
    for other in (1.2, 1.5):  # a wrong temperature fails the bound by far
        wrong = torch.softmax(row[0].double() / other, dim=-1).view(50, 100).sum(1)
        assert float(((freq - wrong) ** 2 / wrong).sum() * n) > 300


@pytest.mark.parametrize("dtype", DTYPES)
def test_padded_rows_are_read_in_place(dtype):
    # An LM head padded past the vocabulary returns a column slice: rows with a stride > V.
    padded = random_logits(16, 1040, dtype, seed=2)
    logits = padded[:, :1000]
    uniform = torch.rand(16, generator=torch.Generator().manual_seed(1))
    expected, margin = reference(logits, torch.ones(16), uniform)
    out = fused(logits, 1.0, uniform)
    assert torch.equal(out[margin > MARGIN], expected[margin > MARGIN])
    assert torch.equal(fused(logits, 0.0, 0.0), logits.argmax(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_tokens_are_never_drawn(dtype):
    # Rows of -inf but for a few tokens, at the extremes of u: only finite tokens come out.
    vocab = 777
    logits = torch.full((6, vocab), float("-inf"), dtype=dtype)
    allowed = [[5], [0, 700], [300, 301, 776], [17, 600], [256, 511, 512], [3, 4, 5, 6, 7, 8, 9]]
    for r, ids in enumerate(allowed):
        logits[r, ids] = torch.arange(len(ids), dtype=torch.float32).to(dtype)
    last_below_one = 1.0 - 2.0**-24
    for u in (0.0, 0.5, last_below_one, 1.0):
        for t in (1.0, 100.0, 1e-4):
            out = fused(logits, t, u)
            assert all(int(out[r]) in ids for r, ids in enumerate(allowed)), (u, t, out)
    first = fused(logits, 1.0, 0.0)
    assert [int(t) for t in first] == [ids[0] for ids in allowed]
    last = fused(logits, 100.0, last_below_one)
    assert [int(t) for t in last] == [ids[-1] for ids in allowed]


def test_special_values_do_not_fail():
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor(
        [
            [1.0, nan, 3.0, nan],  # greedy: torch.argmax's first NaN; random: NaN has no mass
            [-inf, -inf, -inf, -inf],
            [nan, nan, nan, nan],
            [0.0, inf, 2.0, inf],
            [1.0, nan, 3.0, nan],
        ]
    )
    greedy = fused(logits, 0.0, 0.5)
    assert greedy[[0, 3, 4]].tolist() == logits[[0, 3, 4]].argmax(-1).tolist() == [1, 1, 1]
    random = fused(logits, 1.0, 0.99)
    assert ((random >= 0) & (random < 4)).all()
    assert random[0] in (0, 2) and random[3] == 1
    # NaN temperatures and uniforms: no failure either.
    out = fused(logits, torch.tensor([nan, 1.0, 1.0, 1.0, 1.0]), torch.tensor([0.1, nan, 2.0, -1.0, nan]))
    assert ((out >= 0) & (out < 4)).all()


def test_the_sampler_keeps_its_torch_path_where_the_kernel_does_not_apply():
    vocab = 100
    logits = random_logits(4, vocab, torch.bfloat16, seed=0)
    plain = _metadata([SamplingParams(temperature=1.0), SamplingParams(temperature=0.0)] * 2, vocab, 0)
    assert fused_sampling_applies(logits, plain)
    assert fused_sampling_applies(logits.float(), plain)
    assert not fused_sampling_applies(logits.double(), plain)
    assert not fused_sampling_applies(logits.t(), plain)
    for special in (
        SamplingParams(temperature=1.0, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.9),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=1.0, logprobs=2),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(temperature=1.0, presence_penalty=0.5),
        SamplingParams(temperature=1.0, logit_bias={3: 1.0}),
        SamplingParams(temperature=0.0, allowed_token_ids=[1, 2]),
        SamplingParams(temperature=1.0, min_tokens=2, stop_token_ids=[7]),
    ):
        md = _metadata(
            [SamplingParams(temperature=1.0), special, SamplingParams(), SamplingParams()], vocab, 0
        )
        assert not fused_sampling_applies(logits, md), special
    # The logprobs path still answers (from the bf16 logits upcast).
    md = _metadata([SamplingParams(temperature=0.0, logprobs=1)] * 4, vocab, 0)
    out = sampler(logits, md)
    assert torch.equal(out.sampled_token_ids, logits.argmax(-1))
    assert out.logprobs is not None and len(out.logprobs.token_ids) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grammar_bitmask_keeps_the_fused_path_and_its_tokens(dtype):
    """Constrained rows stay on the fused kernel and draw only allowed tokens, the same tokens
    as the torch path on the masked logits; unconstrained rows are untouched."""
    from pagedllm.structured_output.bitmask import unpack_bitmask

    vocab, rows = 2000, 12
    logits = random_logits(rows, vocab, dtype, seed=9, scale=2.0)
    params = [SamplingParams(temperature=[0.0, 0.8][i % 2]) for i in range(rows)]
    gen = torch.Generator().manual_seed(3)
    constrained = torch.tensor([0, 1, 4, 7, 10])
    bitmask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32)
    # Each constrained row allows ~40 random tokens, never its unconstrained argmax.
    for row in constrained.tolist():
        bitmask[row] = 0
        allowed = torch.randperm(vocab, generator=gen)[:40]
        allowed = allowed[allowed != logits[row].argmax()]
        for t in allowed.tolist():
            bitmask[row, t // 32] |= torch.tensor(1 << (t % 32), dtype=torch.int64).to(torch.int32)

    def metadata():
        md = _metadata(params, vocab, seed=4)
        md.grammar_rows, md.grammar_bitmask = constrained, bitmask
        return md

    md = metadata()
    assert fused_sampling_applies(logits, md)
    ours = sampler(logits, md).sampled_token_ids
    torch_ours = Sampler(None)(logits, metadata()).sampled_token_ids
    mask = unpack_bitmask(bitmask, vocab)
    for row in constrained.tolist():
        assert mask[row, ours[row]], f"row {row} drew a forbidden token"
    free = [r for r in range(rows) if r not in constrained.tolist() and params[r].greedy]
    assert torch.equal(ours[free], logits[free].argmax(-1))
    greedy_constrained = [r for r in constrained.tolist() if params[r].greedy]
    assert torch.equal(ours[greedy_constrained], torch_ours[greedy_constrained])

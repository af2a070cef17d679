"""The numerics rule for comparing greedy tokens across engines (see the engine issue).

CPU matmuls are not bit-exact across batch shapes, so two correct engines may pick
different tokens where the top two logprobs are nearly tied. A divergence is accepted
only at a step where the reference's top-2 gap is under `NEAR_TIE` nats and each run's
token is in the other's top 2; the sequences are not compared after that step.
"""

from __future__ import annotations

import pytest

NEAR_TIE = 1e-3


def assert_greedy_match(
    ours: list[int],
    reference: list[int],
    reference_top2: list[list[tuple[int, float]]],
    ours_top2: list[list[int]] | None = None,
    label: str = "",
    near_tie: float = NEAR_TIE,
) -> bool:
    """True if identical; True if the first divergence is an allowed near-tie; else fail.

    `near_tie` widens the rule for lower precisions (bf16 logits move by hundredths of a nat)."""
    for step, (a, b) in enumerate(zip(ours, reference)):
        if a == b:
            continue
        (id1, lp1), (id2, lp2) = reference_top2[step][:2]
        gap = lp1 - lp2
        ref_ids = {id1, id2}
        ok = gap < near_tie and a in ref_ids and (ours_top2 is None or b in ours_top2[step])
        assert ok, (
            f"{label}: tokens diverge at step {step}: ours {a}, reference {b}; reference top-2 "
            f"{reference_top2[step][:2]} (gap {gap:.2e} nats) does not make it a near-tie"
        )
        return False
    assert len(ours) == len(reference), f"{label}: lengths differ: {len(ours)} vs {len(reference)}"
    return True


# bf16 engines: the logits themselves are bf16 (a logit near 20 is stored to 0.125), so two
# correct bf16 engines summing in different orders may part where the top two are within a
# fraction of a nat, and the chosen tokens' logprobs agree to about that before they part.
BF16_NEAR_TIE = 0.25
BF16_LOGPROB_TOLERANCE = 0.25


def assert_bf16_greedy_close(ours: list, reference: list, label: str = "") -> None:
    """`ours` and `reference`: per prompt (token ids, per-step {token: Logprob} with rank).
    Tokens agree until a step where the reference's top two are within BF16_NEAR_TIE nats and
    our token is one of them; the chosen tokens' logprobs agree within BF16_LOGPROB_TOLERANCE
    before that; at least half of the prompts agree all the way."""
    identical = 0
    for (our_ids, our_lps), (ref_ids, ref_lps) in zip(ours, reference):
        for step, (a, b) in enumerate(zip(our_ids, ref_ids)):
            if a != b:
                ref_top = sorted(ref_lps[step].values(), key=lambda lp: lp.rank)
                gap = ref_top[0].logprob - ref_top[1].logprob
                assert gap < BF16_NEAR_TIE and a in ref_lps[step], (
                    f"{label} step {step}: chose {a}, the reference {b} with a top-2 gap of {gap:.3f} nats"
                )
                break
            assert our_lps[step][a].logprob == pytest.approx(
                ref_lps[step][b].logprob, abs=BF16_LOGPROB_TOLERANCE
            )
        else:
            identical += 1
    assert identical >= len(ours) // 2, f"{label}: only {identical} of {len(ours)} prompts agree all the way"

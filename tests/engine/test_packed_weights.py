"""SmolLM2 in bf16 with packed weights (ops/packed_linear.py) against the same engine with plain
weights (oneDNN / the skinny kernel): the same greedy text up to bf16 near-ties, close logprobs.

The two differ only in the order the matmuls sum in, so before any divergence the chosen
tokens' logprobs agree to bf16 rounding (the logits themselves are bf16: a logit near 20 is
stored to 0.125), and a divergence is allowed only where the plain run's top two are within
`BF16_NEAR_TIE` nats, two such steps (far more than the float32 rule in numerics.py allows).
"""

from __future__ import annotations

import pytest

from pagedllm import LLM, SamplingParams
from pagedllm.ops import cpu_kernels
from pagedllm.ops.packed_linear import PackedBF16Weight

pytestmark = pytest.mark.skipif(
    not (cpu_kernels.available() and cpu_kernels.has_avx512_bf16()), reason="needs the AVX512-BF16 kernels"
)

BF16_NEAR_TIE = 0.25
LOGPROB_TOLERANCE = 0.25
PROMPTS = [
    "The history of the printing press begins in",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
    "List three facts about the Moon:",
]


def _generate(llm: LLM):
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True, logprobs=2)
    outs = []
    for out in llm.generate(PROMPTS, params):
        completion = out.outputs[0]
        outs.append((completion.token_ids, completion.logprobs))
    return outs


def test_packed_weights_match_plain_weights(monkeypatch):
    monkeypatch.delenv("PAGEDLLM_PACKED_WEIGHTS", raising=False)
    packed_llm = LLM(dtype="bfloat16", kv_cache_memory=0.25)
    model = packed_llm.engine.engine_core.executor.runner.model
    assert isinstance(model.model.layers[0].self_attn.qkv_proj.quant, PackedBF16Weight)
    assert isinstance(model.lm_head.quant, PackedBF16Weight)
    assert model.model.embed_tokens.quant is model.lm_head.quant  # tied: one packed table
    packed = _generate(packed_llm)
    del packed_llm
    plain_llm = LLM(dtype="bfloat16", kv_cache_memory=0.25, packed_weights=False)
    assert plain_llm.engine.engine_core.executor.runner.model.lm_head.quant is None
    plain = _generate(plain_llm)

    identical = 0
    for (ours, ours_lps), (ref, ref_lps) in zip(packed, plain):
        for step, (a, b) in enumerate(zip(ours, ref)):
            ref_top = sorted(ref_lps[step].values(), key=lambda lp: lp.rank)
            if a != b:
                gap = ref_top[0].logprob - ref_top[1].logprob
                assert gap < BF16_NEAR_TIE and a in ref_lps[step], (
                    f"step {step}: packed chose {a}, plain {b} with a top-2 gap of {gap:.3f} nats"
                )
                break
            assert ours_lps[step][a].logprob == pytest.approx(ref_lps[step][b].logprob, abs=LOGPROB_TOLERANCE)
        else:
            identical += 1
    assert identical >= len(PROMPTS) // 2

"""SmolLM2 in bf16 with packed weights (ops/packed_linear.py) against the same engine with plain
weights (oneDNN / the skinny kernel): the same greedy text up to bf16 near-ties, close logprobs.

The two differ only in the order the matmuls sum in, so they are held to numerics.py's bf16
rule (`assert_bf16_greedy_close`).
"""

from __future__ import annotations

import pytest

from memory_maps import vm_flags
from numerics import assert_bf16_greedy_close
from pagedllm import LLM, SamplingParams
from pagedllm.ops import cpu_kernels
from pagedllm.ops.packed_linear import PackedBF16Weight
from pagedllm.platforms import cpu as cpu_platform
from pagedllm.platforms.cpu_huge_pages import transparent_huge_pages

pytestmark = pytest.mark.skipif(
    cpu_kernels.instruction_set() == "scalar", reason="needs the CPU kernels' vector paths"
)

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
    packed_llm = LLM(dtype="bfloat16", kv_cache_memory=0.25, packed_weights=True)
    model = packed_llm.engine.engine_core.executor.runner.model
    assert isinstance(model.model.layers[0].self_attn.qkv_proj.quant, PackedBF16Weight)
    assert isinstance(model.lm_head.quant, PackedBF16Weight)
    assert model.model.embed_tokens.quant is model.lm_head.quant  # tied: one packed table
    qkv = model.model.layers[0].self_attn.qkv_proj.quant.packed
    if transparent_huge_pages():  # the platform moved the weights into huge pages after loading
        assert "hg" in vm_flags(qkv.data_ptr()) and "hg" in vm_flags(model.lm_head.quant.packed.data_ptr())
    packed = _generate(packed_llm)
    del packed_llm
    # Plain weights on the skinny kernel's full row range, as on CPUs without AMX: on AMX CPUs
    # the platform hands steps of more than a few rows to oneDNN, whose sums round no worse but
    # in another order, so greedy text parts at near-ties more often than this rule allows for
    # kernels of one family (the decoder-stack tests cover that split exactly).
    monkeypatch.setattr(cpu_platform, "cpu_has_amx_bf16", lambda: False)
    # Also with the weights left where the loader put them (the move not even tried): the same
    # numbers either way.
    moves: list = []
    monkeypatch.setattr(cpu_platform, "move_weights_to_huge_pages", moves.append)
    plain_llm = LLM(dtype="bfloat16", kv_cache_memory=0.25, packed_weights=False, huge_pages=False)
    assert plain_llm.engine.engine_core.executor.runner.model.lm_head.quant is None
    assert moves == []
    plain = _generate(plain_llm)

    assert_bf16_greedy_close(packed, plain, "packed vs plain")

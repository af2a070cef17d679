"""The AVX2 build of the CPU kernels, forced on this CPU, serving SmolLM2 end to end.

CPUs without AVX-512 run the kernels' AVX2 + FMA paths (ops/cpu_kernels.py). Each kernel is
tested against its reference on both builds in tests/ops and tests/attention; here the whole
engine runs on the AVX2 build (packed bf16 weights, the skinny, 4-bit and int8 matmuls, blocked
paged attention and the compiled decoder stack) and is held to the bf16 rule of numerics.py
against the pure-torch path (kernels off) on the same quantized weights.
"""

from __future__ import annotations

import pytest

from numerics import assert_bf16_greedy_close
from pagedllm import LLM, SamplingParams
from pagedllm.ops import cpu_kernels
from pagedllm.ops.int4_gemv import GemvInt4Weight
from pagedllm.ops.int8_gemv import GemvInt8Weight
from pagedllm.ops.packed_linear import PackedBF16Weight

PROMPTS = [
    "The history of the printing press begins in",
    "def fibonacci(n):",
    "Photosynthesis is the process by which",
    "List three facts about the Moon:",
]
COMPILED_WEIGHT = {None: PackedBF16Weight, "int4": GemvInt4Weight, "int8": GemvInt8Weight}


def _generate(llm: LLM):
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("quantization", [None, "int4", "int8"])
def test_smollm2_on_the_avx2_build_generates_what_the_torch_path_does(
    quantization, avx2_kernels, monkeypatch
):
    for switch in ("PAGEDLLM_PACKED_WEIGHTS", "PAGEDLLM_DECODER_STACK", "PAGEDLLM_ATTENTION_BACKEND"):
        monkeypatch.delenv(switch, raising=False)
    kwargs = dict(
        dtype="bfloat16", kv_cache_memory=0.25, quantization=quantization, max_num_batched_tokens=32
    )
    llm = LLM(**kwargs, packed_weights=True)  # packed on every CPU (AMX ones default to plain)
    runner = llm.engine.engine_core.executor.runner
    assert cpu_kernels.instruction_set() == "avx2"
    assert runner.compiled_step is not None
    assert isinstance(runner.model.model.layers[0].mlp.down_proj.quant, COMPILED_WEIGHT[quantization])
    ours = _generate(llm)
    del llm
    reference = _generate(LLM(**kwargs, cpu_kernels=False))
    assert_bf16_greedy_close(ours, reference, f"AVX2 build, {quantization or 'bf16'}")

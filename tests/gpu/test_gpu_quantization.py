"""int8 and int4 weights against bf16 on CUDA, on a tiny Llama.

Teacher-forced: bf16's own greedy continuations of four prompts are fed back as prompts, and
each engine's prompt logprobs give, at every position, the logprob of the token that follows
and the engine's own argmax. Quantization may move those by the tolerances below (calibrated
on CPU with the same model and sequences) but no further.
"""

from __future__ import annotations

import pytest
from gpu_models import block_size_for, random_prompts

from pagedllm import LLM, SamplingParams

pytestmark = pytest.mark.gpu

# method -> (bound on mean |dlogprob|, least argmax agreement). Measured on CPU (the pure-torch
# path, this model and these sequences): int8 0.013 and 94%, int4 0.129 and 64% (random
# Gaussian weights are 4-bit groups' worst case). A wrong kernel (codes, scales, layout) moves
# logprobs by nats and agrees about as often as chance (1 in 512).
TOLERANCES = {"int8": (0.04, 0.85), "int4": (0.3, 0.5)}


def engine(folder, quantization: str | None) -> LLM:
    return LLM(
        str(folder),
        device="cuda",
        dtype="bfloat16",
        quantization=quantization,
        num_kv_blocks=128,
        block_size=block_size_for("llama"),
    )


def teacher_forced(llm: LLM, sequences: list[list[int]]) -> tuple[list[float], list[int]]:
    """Per position after the first: (logprob of the next token, the engine's argmax)."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    logprobs, argmax = [], []
    for seq, output in zip(sequences, llm.generate([{"prompt_token_ids": s} for s in sequences], params)):
        for token, position in zip(seq[1:], output.prompt_logprobs[1:]):
            logprobs.append(position[token].logprob)
            argmax.append(next(t for t, lp in position.items() if lp.rank == 1))
    return logprobs, argmax


@pytest.fixture(scope="module")
def bf16_run(tiny_dirs):
    folder = tiny_dirs("llama")
    llm = engine(folder, None)
    prompts = random_prompts([5, 17, 33, 48])
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    sequences = [p + o.outputs[0].token_ids for p, o in zip(prompts, outputs)]
    return folder, sequences, teacher_forced(llm, sequences)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_weights_stay_close_to_bf16(method, bf16_run):
    folder, sequences, (ref_logprobs, ref_argmax) = bf16_run
    logprobs, argmax = teacher_forced(engine(folder, method), sequences)
    drift = sum(abs(a - b) for a, b in zip(logprobs, ref_logprobs)) / len(logprobs)
    agreement = sum(a == b for a, b in zip(argmax, ref_argmax)) / len(argmax)
    max_drift, min_agreement = TOLERANCES[method]
    assert drift < max_drift, f"{method}: mean |dlogprob| {drift:.4f}"
    assert agreement >= min_agreement, f"{method}: argmax agrees at {agreement:.1%} of positions"

"""The CPU step compiler (the whole decoder stack as one C++ op) gives the Python layers' bits.

Each case runs the same requests through two engines, one with the step compiler off
(`step_compiler=False`), and compares sampled tokens, sample logprobs and prompt logprobs
exactly: the op runs the same kernels in the same order, so any difference is a bug. Mixed
steps (prefill chunks beside decodes), prefix hits and sliding windows all go through it.
"""

from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, SamplingParams
from pagedllm.ops import cpu_kernels
from pagedllm.ops.decoder_stack import decoder_stack_info
from pagedllm.ops.linear import AMX_SKINNY_MAX_ROWS, SKINNY_MAX_ROWS
from pagedllm.ops.onednn_linear import onednn_available
from pagedllm.platforms import cpu as cpu_platform
from pagedllm.platforms.cpu_step_compiler import CpuDecoderStack
from pagedllm.worker.model_runner import ModelRunner

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels not built")


def _stack_of(llm: LLM):
    return llm.engine.engine_core.executor.runner.compiled_step


def _run(llm: LLM, prompts: list[list[int]], max_tokens: int):
    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=3, prompt_logprobs=2
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    result = []
    for out in outputs:
        completion = out.outputs[0]
        sample_lps = [{t: lp.logprob for t, lp in d.items()} for d in completion.logprobs]
        prompt_lps = [
            None if d is None else {t: lp.logprob for t, lp in d.items()} for d in out.prompt_logprobs
        ]
        result.append((completion.token_ids, sample_lps, prompt_lps))
    return result


def _both(monkeypatch, prompts, max_tokens, **llm_kwargs):
    """(fused engine, its outputs, the Python layers' outputs); fails unless every step of the
    fused engine went through the op."""
    fused = LLM(**llm_kwargs)
    layers = LLM(**llm_kwargs, step_compiler=False)
    assert _stack_of(layers) is None
    op_calls, forwards = [], []
    op, forward = CpuDecoderStack.__call__, ModelRunner.forward

    def counted_op(self, *args):
        op_calls.append(1)
        return op(self, *args)

    def counted_forward(self, *args):
        forwards.append(1)
        return forward(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(CpuDecoderStack, "__call__", counted_op)
        patch.setattr(ModelRunner, "forward", counted_forward)
        ours = _run(fused, prompts, max_tokens)
    # Every step of these prompts (prefill chunks beside decodes, prefix hits) fits the op.
    assert len(forwards) >= max_tokens and len(op_calls) == len(forwards)
    return fused, ours, _run(layers, prompts, max_tokens)


def _prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
    # A prompt sharing a long prefix with the first one: a prefix hit once the first is cached.
    prompts.append(prompts[0][:40] + prompts[-1][:7])
    return prompts


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_mistral_dir"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_models_match_python_layers(fixture, dtype, kernel_target, request, monkeypatch):
    path = request.getfixturevalue(fixture)
    prompts = _prompts(512, [48, 5, 17, 33, 70], seed=3)
    kwargs = dict(model=str(path), dtype=dtype, max_num_batched_tokens=32, num_kv_blocks=96, block_size=16)
    fused, ours, reference = _both(monkeypatch, prompts, 24, **kwargs)
    assert _stack_of(fused) is not None
    assert ours == reference


def test_qwen2_biases_keep_the_python_layers(tiny_qwen2_dir):
    llm = LLM(str(tiny_qwen2_dir), dtype="float32", num_kv_blocks=32, block_size=8)
    assert _stack_of(llm) is None


def test_environment_switch_overrides_the_config(tiny_llama_dir, monkeypatch):
    kwargs = dict(model=str(tiny_llama_dir), dtype="float32", num_kv_blocks=32, block_size=16)
    monkeypatch.delenv("PAGEDLLM_DECODER_STACK", raising=False)
    assert _stack_of(LLM(**kwargs)) is not None
    monkeypatch.setenv("PAGEDLLM_DECODER_STACK", "0")
    assert _stack_of(LLM(**kwargs)) is None


@pytest.mark.parametrize(
    ("packed_weights", "amx"),
    [(True, False), (False, False), (False, True)],
    ids=["packed", "plain", "plain-amx"],
)
def test_smollm2_bf16_matches_python_layers(monkeypatch, packed_weights, amx):
    """Packed weights, and plain ones: the skinny kernel up to the platform's row limit (64, or
    4 where it takes the CPU for an AMX one), oneDNN above; the op must split the rows where the
    layers do, whichever limit the platform passes it."""
    monkeypatch.setattr(cpu_platform, "cpu_has_amx_bf16", lambda: amx)
    prompts = _prompts(49152, [64, 9, 130, 31], seed=5)
    kwargs = dict(
        dtype="bfloat16", max_num_batched_tokens=96, kv_cache_memory=0.25, packed_weights=packed_weights
    )
    fused, ours, reference = _both(monkeypatch, prompts, 16, **kwargs)
    assert _stack_of(fused).skinny_max_rows == (AMX_SKINNY_MAX_ROWS if amx else SKINNY_MAX_ROWS)
    assert ours == reference


@pytest.mark.skipif(not onednn_available(), reason="torch has no oneDNN bf16 matmul on this CPU")
def test_smollm2_onednn_weights_match_python_layers(monkeypatch):
    """bf16 weights packed for oneDNN (`onednn_weights`): the op calls oneDNN's matmul on the
    same tensors as the layers; the tied LM head stays a plain table."""
    prompts = _prompts(49152, [64, 9, 130, 31], seed=6)
    kwargs = dict(dtype="bfloat16", max_num_batched_tokens=96, kv_cache_memory=0.25, onednn_weights=True)
    fused, ours, reference = _both(monkeypatch, prompts, 16, **kwargs)
    assert decoder_stack_info().kinds["onednn_bf16"] in _stack_of(fused).weight_kinds
    assert ours == reference


@pytest.mark.parametrize("method", ["int4", "int4-g128"])
def test_smollm2_int4_matches_python_layers(monkeypatch, method):
    """4-bit weights in the compiled 4-bit kernel's layout run inside the op too (the platform
    taken for one without AMX, whose 128-row kernel limit every step here fits), in groups of
    32 and in int4-g128's groups of 64 and 128 (the op finds the group size from the bytes)."""
    monkeypatch.setattr(cpu_platform, "cpu_has_amx_bf16", lambda: False)
    prompts = _prompts(49152, [64, 9, 31], seed=7)
    kwargs = dict(dtype="bfloat16", quantization=method, max_num_batched_tokens=96, kv_cache_memory=0.25)
    if cpu_kernels.instruction_set() == "scalar":
        pytest.skip("4-bit weights are not in the compiled kernel's layout on this CPU")
    fused, ours, reference = _both(monkeypatch, prompts, 16, **kwargs)
    stack = _stack_of(fused)
    assert stack is not None and stack.max_rows is not None
    assert ours == reference


def test_smollm2_int8_matches_python_layers(monkeypatch):
    """int8 weights in the compiled int8 kernel's layout run inside the op too (steps of up to
    the kernel's 32 rows, so every step of these prompts fits the op; the platform taken for
    one without AMX, where the limit is fewer rows)."""
    monkeypatch.setattr(cpu_platform, "cpu_has_amx_bf16", lambda: False)
    prompts = _prompts(49152, [64, 9, 31], seed=8)
    kwargs = dict(dtype="bfloat16", quantization="int8", max_num_batched_tokens=32, kv_cache_memory=0.25)
    if cpu_kernels.instruction_set() == "scalar":
        pytest.skip("int8 weights are not in the compiled kernel's layout on this CPU")
    fused, ours, reference = _both(monkeypatch, prompts, 16, **kwargs)
    stack = _stack_of(fused)
    assert stack is not None and stack.max_rows is not None
    assert decoder_stack_info().kinds["int8_gemv"] in stack.weight_kinds
    assert ours == reference

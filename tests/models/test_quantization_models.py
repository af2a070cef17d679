"""Quantized models end to end: tiny Llama/Qwen2 checkpoints against transformers running the
dequantized weights, GGUF 4-bit tensors loaded without a float round trip, and the real SmolLM2."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from paged_batch import check_prefill_then_decode

from hf_reference import hf_greedy
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.model.layers.linear import LinearBase, MergedColumnParallelLinear, QKVParallelLinear
from pagedllm.model.layers.quantization import Int4Weight, Int8Weight
from pagedllm.model.layers.quantization.int4 import group_size_for
from pagedllm.model.loader.gguf import decode_int4, iterate_gguf_weights
from pagedllm.model.loader.resolve import resolve_model
from pagedllm.model.model_config import ModelConfig
from pagedllm.model.model_loader import load_model
from pagedllm.ops.int4_gemv import GemvInt4Weight
from pagedllm.ops.int8_gemv import GemvInt8Weight

BLOCK_SIZE = 4


def dequantized_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our quantized weights, dequantized to float32, under transformers' names."""
    state = {}
    for name, module in model.named_modules():
        quant = getattr(module, "quant", None)
        if quant is None:
            continue
        weight = quant.dequantize(torch.float32)
        if isinstance(module, QKVParallelLinear):
            parts = weight.split([module.q_size, module.kv_size, module.kv_size])
            for part, proj in zip(parts, ("q_proj", "k_proj", "v_proj")):
                state[name.replace("qkv_proj", proj) + ".weight"] = part
        elif isinstance(module, MergedColumnParallelLinear):
            for part, proj in zip(weight.split(module.output_sizes), ("gate_proj", "up_proj")):
                state[name.replace("gate_up_proj", proj) + ".weight"] = part
        else:
            state[name + ".weight"] = weight
    return state


def reference_with(folder, state: dict[str, torch.Tensor]):
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            if name == "lm_head.weight" and name not in params:  # tied: the embedding's, checked
                assert torch.equal(tensor, state["model.embed_tokens.weight"])
                continue
            params[name].copy_(tensor)
    return reference


@pytest.mark.parametrize(
    ("kind", "method"),
    list(itertools.product(["llama", "qwen2"], ["int8", "int4"])) + [("llama", "int4-g128")],
)
def test_quantized_model_equals_transformers_on_dequantized_weights(kind, method, tiny_model_dir):
    """Prefill (the many-rows path) and a batched decode (the fused kernels) of the quantized
    model match transformers running the weights the quantized ones stand for."""
    folder = tiny_model_dir(kind)
    config = ModelConfig.from_resolved(resolve_model(str(folder)), quantization=method)
    ours = load_model(config, torch.device("cpu"), torch.float32)
    linears = [m for m in ours.modules() if isinstance(m, LinearBase)]
    expected = Int4Weight if method.startswith("int4") else Int8Weight
    assert linears and all(isinstance(m.quant, expected) and m.weight is None for m in linears)
    if method == "int4-g128":  # the largest group that divides each layer's K
        assert {m.quant.group_size for m in linears} == {group_size_for(m.input_size, 128) for m in linears}
        assert max(m.quant.group_size for m in linears) > 32
    assert isinstance(ours.lm_head.quant, Int8Weight) and ours.model.embed_tokens.weight is None
    reference = reference_with(folder, dequantized_state_dict(ours))
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist() for n in (5, 17, 11)]
    check_prefill_then_decode(ours, reference, prompts, BLOCK_SIZE, f"{kind} {method}")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_engine_generates_with_quantized_weights(method, tiny_model_dir):
    """The engine (float32) decodes the same greedy tokens as transformers on the dequantized weights."""
    folder = tiny_model_dir("llama")
    llm = LLM(str(folder), dtype="float32", quantization=method, num_kv_blocks=64, max_num_seqs=4)
    model = llm.engine.engine_core.executor.runner.model
    reference = reference_with(folder, dequantized_state_dict(model))
    prompt = [1, 17, 250, 33, 90, 7]
    out = llm.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    )
    ref_tokens, ref_top2, _ = hf_greedy(reference, prompt, 12)
    assert_greedy_match(out[0].outputs[0].token_ids, ref_tokens, ref_top2, label=method)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1])
def test_decode_int4_equals_gguf_dequantize(qtype):
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((48, 96)) * 0.05).astype(np.float32)
    weights[0, :32] += 0.3  # an off-centre group
    raw = quantize(weights, qtype)
    codes, scale, zero = decode_int4(raw, qtype, weights.shape)
    assert codes.dtype == np.uint8 and codes.max() <= 15
    ours = (codes.reshape(48, 3, 32).astype(np.float32) - 8) * scale[..., None] + zero[..., None]
    np.testing.assert_allclose(ours.reshape(48, 96), dequantize(raw, qtype), rtol=1e-6, atol=1e-7)


def test_smollm2_q4_1_tensors_decode_to_the_dequantized_weights(smollm2):
    """The real GGUF: Q4_1 tensors as 4-bit groups (q and k rows unpermuted) equal the float path."""
    blocks = iterate_gguf_weights(smollm2.path, int4_blocks=True)
    floats = iterate_gguf_weights(smollm2.path)
    seen = set()
    for (name, ours), (ref_name, ref) in itertools.islice(zip(blocks, floats), 12):
        assert name == ref_name
        if not isinstance(ours, torch.Tensor):
            seen.add(name.split(".")[-2])
            torch.testing.assert_close(ours.dequantize(), ref, rtol=1e-6, atol=1e-7)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= seen


@pytest.fixture(scope="module", params=["int8", "int4", "int4-g128"])
def smollm2_quantized(request):
    return request.param, LLM("smollm2-135m-instruct", quantization=request.param, kv_cache_memory=0.1)


def test_smollm2_quantized_knows_the_capital_of_france(smollm2_quantized):
    method, llm = smollm2_quantized
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    assert "Paris" in out[0].outputs[0].text, (method, out[0].outputs[0].text)
    model = llm.engine.engine_core.executor.runner.model
    gate_up = model.model.layers[0].mlp.gate_up_proj
    # The portable format, or the compiled kernel's where the CPU platform has it.
    formats = (Int4Weight, GemvInt4Weight) if method.startswith("int4") else (Int8Weight, GemvInt8Weight)
    assert isinstance(gate_up.quant, formats)
    if method == "int4-g128":  # K = 576 takes groups of 64, K = 1536 (down) groups of 128
        assert gate_up.quant.group_size == 64
        assert model.model.layers[0].mlp.down_proj.quant.group_size == 128
    if method == "int4":  # the GGUF's own codes, not a requantization
        path = resolve_model("smollm2-135m-instruct").path
        gate = next(
            t for n, t in iterate_gguf_weights(path, int4_blocks=True) if n.endswith("0.mlp.gate_proj.weight")
        )
        assert torch.equal(gate_up.quant.codes_t().t()[: gate.shape[0]], gate.codes)

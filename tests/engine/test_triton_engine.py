"""The Triton attention backend end to end (CPU: Triton's interpreter) on tiny random models.

A Llama, a Mistral whose window (24) is shorter than the longer prompts, and a Gemma-3-shaped
model (sliding and global layers, one KV head of size 24) generate greedily for four prompts in
one batch, with chunked prefill (16-token budget), then again with the prefix cache hit. Tokens
must equal transformers' (float32, one prompt at a time; near-ties aside, see numerics.py) and
the torch backend's, and prompt logprobs must agree with transformers'.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from hf_reference import hf_greedy, hf_prompt_logprobs
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

pytest.importorskip("triton")
# The Triton backend uses none of the CPU kernels: CI's kernels-off leg would repeat this as is.
pytestmark = pytest.mark.skipif(
    os.environ.get("PAGEDLLM_CPU_KERNELS") == "0", reason="runs once, in the run with the CPU kernels"
)

NUM_TOKENS = 16
PROMPT_LENS = [5, 17, 33, 48]
MODELS = ["llama", "mistral", "gemma3"]


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.gemma3_config(), tmp_path_factory.mktemp("tiny-gemma3"), seed=5)


@pytest.fixture(scope="module")
def model_case(request, tiny_llama_dir, tiny_mistral_dir, gemma3_dir):
    """(folder, block size, prompts, transformers' greedy (tokens, top-2) and prompt logprobs)."""
    folders = {"llama": tiny_llama_dir, "mistral": tiny_mistral_dir, "gemma3": gemma3_dir}
    folder = folders[request.param]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENS]
    greedy = [hf_greedy(reference, p, NUM_TOKENS)[:2] for p in prompts]
    prompt_logprobs = [hf_prompt_logprobs(reference, p) for p in prompts]
    block_size = 4 if request.param == "gemma3" else 8
    return request.param, folder, block_size, prompts, greedy, prompt_logprobs


def engine(folder, block_size, backend):
    llm = LLM(
        str(folder),
        dtype="float32",
        attention_backend=backend,
        max_num_batched_tokens=16,
        num_kv_blocks=160,
        block_size=block_size,
    )
    assert llm.engine.engine_core.executor.runner.backend.name == backend
    return llm


def generate(llm, prompts, prompt_logprobs):
    params = SamplingParams(
        temperature=0.0,
        max_tokens=NUM_TOKENS,
        ignore_eos=True,
        prompt_logprobs=1 if prompt_logprobs else None,
    )
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params)


@pytest.mark.parametrize("model_case", MODELS, indirect=True)
def test_triton_backend_equals_transformers_and_torch_backend(model_case):
    kind, folder, block_size, prompts, greedy, prompt_logprobs = model_case
    llm = engine(folder, block_size, "triton")
    # One batch with chunked prefill (prompt logprobs: every prompt token is computed) ...
    batch = generate(llm, prompts, prompt_logprobs=True)
    # ... then the same prompts again, hitting the prefix cache the first batch filled.
    rerun = generate(llm, prompts, prompt_logprobs=False)
    for prompt, output in zip(prompts, rerun):
        assert output.num_cached_tokens == (len(prompt) - 1) // block_size * block_size
    torch_batch = generate(engine(folder, block_size, "torch"), prompts, prompt_logprobs=False)
    for i, prompt in enumerate(prompts):
        ref_tokens, ref_top2 = greedy[i]
        for label, outputs in (("batch", batch), ("prefix hit", rerun)):
            tokens = outputs[i].outputs[0].token_ids
            assert_greedy_match(tokens, ref_tokens, ref_top2, label=f"{kind} triton {label} [{i}]")
            assert_greedy_match(
                tokens, torch_batch[i].outputs[0].token_ids, ref_top2, label=f"{kind} triton vs torch [{i}]"
            )
        ours = [lp[t].logprob for t, lp in zip(prompt[1:], batch[i].prompt_logprobs[1:])]
        assert ours == pytest.approx(prompt_logprobs[i], abs=1e-3), f"{kind} prompt logprobs [{i}]"

"""Tensor parallelism through the engine: two gloo ranks (this process and one spawned worker).

Tiny random Llama, Qwen3, Gemma 3 (a sliding-window group and MQA: the KV head is replicated),
Mixtral (experts split within their intermediate size) and GPT-2 checkpoints generate greedily
for four prompts in one batch with chunked prefill, then again with the prefix cache hit; TP=2
must give TP=1's tokens (numerics.py's near-tie rule) and prompt logprobs (float32). SmolLM2
(9 query heads) is refused at start-up, and a worker killed mid-request ends it with the
engine dead.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

import tiny_models
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams
from pagedllm.engine.core_client import EngineDeadError

NUM_TOKENS = 12
CONFIGS = {
    "llama": tiny_models.llama_config,
    "qwen3": tiny_models.qwen3_config,
    "gemma3": tiny_models.gemma3_config,
    "mixtral": tiny_models.mixtral_config,
    "gpt2": lambda: tiny_models.gpt2_config(n_head=4),  # 4 heads of 18: two per rank
}


def chunked_llm(folder, tp: int, **engine_args) -> LLM:
    """An engine whose 16-token step budget chunks every prompt but the shortest."""
    return LLM(
        str(folder),
        dtype="float32",
        tensor_parallel_size=tp,
        max_num_batched_tokens=16,
        num_kv_blocks=96,
        block_size=4,
        **engine_args,
    )


def generate_twice(llm: LLM, prompts):
    """Greedy completions of `prompts` in one batch (with logprobs and prompt logprobs), then
    again (every prompt now a prefix-cache hit)."""
    with_logprobs = SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    batch = [{"prompt_token_ids": p} for p in prompts]
    first = llm.generate(batch, with_logprobs)
    rerun = llm.generate(batch, SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True))
    return first, rerun


def generate(folder, tp: int, prompts, **engine_args):
    llm = chunked_llm(folder, tp, **engine_args)
    try:
        return generate_twice(llm, prompts)
    finally:
        llm.engine.shutdown()


def four_prompts() -> list[list[int]]:
    """Random prompts of 5, 17, 26 and 40 tokens: one prefill step, and up to three chunks."""
    gen = torch.Generator().manual_seed(4)
    return [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in (5, 17, 26, 40)]


def top2(completion) -> list[list[tuple[int, float]]]:
    return [
        [(t, v.logprob) for _, t, v in sorted((v.rank, t, v) for t, v in lp.items() if v.rank in (1, 2))]
        for lp in completion.logprobs
    ]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_two_ranks_generate_what_one_does(kind, tmp_path):
    folder = tiny_models.save_tiny(CONFIGS[kind](), tmp_path / kind, seed=3)
    prompts = four_prompts()
    one, one_rerun = generate(folder, 1, prompts)
    two, two_rerun = generate(folder, 2, prompts)
    for i, prompt in enumerate(prompts):
        reference = one[i].outputs[0]
        for label, outputs in (("batch", two), ("prefix hit", two_rerun)):
            assert_greedy_match(
                outputs[i].outputs[0].token_ids,
                reference.token_ids,
                top2(reference),
                label=f"{kind} {label} [{i}]",
            )
        assert two_rerun[i].num_cached_tokens == one_rerun[i].num_cached_tokens > 0
        ours = [lp[t].logprob for t, lp in zip(prompt[1:], two[i].prompt_logprobs[1:])]
        theirs = [lp[t].logprob for t, lp in zip(prompt[1:], one[i].prompt_logprobs[1:])]
        assert ours == pytest.approx(theirs, abs=1e-4), f"{kind} prompt logprobs [{i}]"


def test_smollm2_heads_do_not_split_over_two_ranks_and_say_so():
    with pytest.raises(
        ValueError, match="has 9 query heads and 3 KV heads, which do not split over --tensor-parallel-size 2"
    ):
        LLM("smollm2-135m-instruct", tensor_parallel_size=2, num_kv_blocks=16)


def test_a_worker_killed_mid_request_ends_it_with_the_engine_dead(tmp_path):
    folder = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "llama")
    llm = LLM(str(folder), dtype="float32", tensor_parallel_size=2, num_kv_blocks=160, block_size=4)
    worker = llm.engine.engine_core.executor.workers[0]
    killed = threading.Event()

    def kill_worker():
        os.kill(worker.pid, signal.SIGKILL)
        killed.set()

    timer = threading.Timer(0.5, kill_worker)  # the request decodes for several seconds
    timer.start()
    try:
        with pytest.raises(EngineDeadError):
            llm.generate(
                [{"prompt_token_ids": [5] * 20}],
                SamplingParams(temperature=0.0, max_tokens=480, ignore_eos=True),
            )
        assert killed.is_set()
        assert not llm.engine.client.is_alive
        with pytest.raises(EngineDeadError):
            llm.generate([{"prompt_token_ids": [7] * 4}], SamplingParams(max_tokens=2))
    finally:
        timer.cancel()
        llm.engine.shutdown()


def test_seeded_sampling_logprobs_and_structured_outputs_as_with_one_rank(tmp_path):
    """Sampling runs on every rank from the same logits and the same seeded generators, and
    grammar bitmasks are the same everywhere: TP=2 draws what TP=1 draws."""
    from pagedllm.structured_outputs_params import StructuredOutputsParams

    folder = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "llama")
    prompts = [{"prompt_token_ids": [5, 9, 33, 200, 7]}, {"prompt_token_ids": [300, 2, 11]}]
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, max_tokens=10, seed=7, logprobs=3, ignore_eos=True),
        SamplingParams(
            temperature=0.7,
            seed=11,
            max_tokens=12,
            structured_outputs=StructuredOutputsParams(regex="[ab]{4}"),
        ),
    ]
    results = []
    for tp in (1, 2):
        llm = LLM(str(folder), dtype="float32", tensor_parallel_size=tp, num_kv_blocks=64, block_size=4)
        try:
            results.append(llm.generate(prompts, params))
        finally:
            llm.engine.shutdown()
    one, two = results
    assert two[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    for lp_one, lp_two in zip(one[0].outputs[0].logprobs, two[0].outputs[0].logprobs):
        assert {t: v.logprob for t, v in lp_two.items()} == pytest.approx(
            {t: v.logprob for t, v in lp_one.items()}, abs=1e-4
        )
    assert two[1].outputs[0].text == one[1].outputs[0].text
    assert len(two[1].outputs[0].text) == 4 and set(two[1].outputs[0].text) <= {"a", "b"}


@pytest.mark.skipif(
    os.environ.get("PAGEDLLM_CPU_KERNELS") == "0",
    reason="the real model runs once, in the run with the CPU kernels",
)
def test_real_gemma3_270m_under_two_ranks_matches_transformers():
    """Gemma 3 270M (4 query heads, 1 KV head replicated, a 262k vocabulary split in two) from
    its GGUF, float32, against transformers on the same file."""
    from transformers import AutoModelForCausalLM

    from hf_reference import hf_greedy, hf_prompt_logprobs
    from pagedllm.model.loader.resolve import resolve_model

    llm = LLM("gemma-3-270m", dtype="float32", tensor_parallel_size=2, kv_cache_memory=0.1, max_model_len=512)
    try:
        ids = llm.get_tokenizer()("The capital of France is").input_ids
        params = SamplingParams(
            temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=2, prompt_logprobs=1
        )
        (output,) = llm.generate([{"prompt_token_ids": ids}], params)
    finally:
        llm.engine.shutdown()
    path = resolve_model("gemma-3-270m").path
    reference = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    ref_tokens, ref_top2, _ = hf_greedy(reference.eval(), ids, 16)
    completion = output.outputs[0]
    assert_greedy_match(completion.token_ids, ref_tokens, ref_top2, label="gemma-3-270m TP=2")
    ours_prompt = [lp[t].logprob for t, lp in zip(ids[1:], output.prompt_logprobs[1:])]
    assert ours_prompt == pytest.approx(hf_prompt_logprobs(reference, ids), abs=1e-3)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_shards_generate_what_one_rank_does(quantization, tmp_path):
    """Each rank quantizes its shard (int8: per-row scales over the rank's columns of a
    row-parallel weight, so values differ slightly from one rank's; int4: the same groups of 32)."""
    folder = tiny_models.save_tiny(tiny_models.llama_config(), tmp_path / "llama", seed=3)
    prompts = [
        {"prompt_token_ids": [5, 9, 33, 200, 7, 1, 64, 90, 12]},
        {"prompt_token_ids": [300, 2, 11, 45]},
    ]
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2)
    runs = []
    for tp in (1, 2):
        llm = LLM(
            str(folder),
            dtype="float32",
            tensor_parallel_size=tp,
            num_kv_blocks=64,
            block_size=4,
            quantization=quantization,
        )
        try:
            runs.append(llm.generate(prompts, params))
        finally:
            llm.engine.shutdown()
    for i, (one, two) in enumerate(zip(*runs)):
        reference = one.outputs[0]
        assert_greedy_match(
            two.outputs[0].token_ids, reference.token_ids, top2(reference), label=f"{quantization} [{i}]"
        )

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


def generate(folder, tp: int, prompts):
    llm = LLM(
        str(folder),
        dtype="float32",
        tensor_parallel_size=tp,
        max_num_batched_tokens=16,
        num_kv_blocks=96,
        block_size=4,
    )
    try:
        with_logprobs = SamplingParams(
            temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=1
        )
        batch = [{"prompt_token_ids": p} for p in prompts]
        first = llm.generate(batch, with_logprobs)
        rerun = llm.generate(batch, SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True))
    finally:
        llm.engine.shutdown()
    return first, rerun


def top2(completion) -> list[list[tuple[int, float]]]:
    return [
        [(t, v.logprob) for _, t, v in sorted((v.rank, t, v) for t, v in lp.items() if v.rank in (1, 2))]
        for lp in completion.logprobs
    ]


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_two_ranks_generate_what_one_does(kind, tmp_path):
    folder = tiny_models.save_tiny(CONFIGS[kind](), tmp_path / kind, seed=3)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist() for n in (5, 17, 26, 40)]
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
        ValueError, match=r"attention heads \(9\) is not divisible by the tensor-parallel size \(2\)"
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

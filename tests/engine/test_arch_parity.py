"""Qwen3, Phi-3 (plain and LongRoPE), GPT-2, Mixtral and Qwen2-MoE through `LLM` equal transformers.

For each architecture a tiny random checkpoint runs a batch of prompts of different lengths
for 32 greedy tokens: tokens (numerics rule), chosen-token logprobs and prompt logprobs must
match transformers run one prompt at a time; in one batch, with chunked prefill (16-token
budget), and (tokens and their logprobs) on a second run of the batch that hits the prefix cache. The Mixtral checkpoint is
saved in shards with an index file.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models
from hf_reference import hf_forward, hf_greedy, hf_prompt_logprobs, top2_gaps
from numerics import assert_greedy_match
from pagedllm import LLM, SamplingParams

NUM_TOKENS = 32
PROMPT_LENS = [5, 17, 33, 48]
BLOCK = 8

# kind -> (config, save_pretrained kwargs)
ARCHS = {
    "qwen3": (tiny_models.qwen3_config, {}),
    "phi3": (tiny_models.phi3_config, {}),
    # Every prompt fits the original 48 positions; decoding crosses into the long factors at
    # different steps (at once for the 48-token prompt, never for the 5-token one).
    "phi3-longrope": (lambda: tiny_models.phi3_longrope_config(original_max=48), {}),
    "gpt2": (tiny_models.gpt2_config, {}),
    "mixtral": (tiny_models.mixtral_config, {"max_shard_size": "200KB"}),
    "qwen2-moe": (tiny_models.qwen2_moe_config, {}),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint(kind) -> (folder, transformers reference model), built once per kind."""
    built = {}

    def get(kind: str):
        if kind not in built:
            make_config, save_kwargs = ARCHS[kind]
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            tiny_models.save_tiny(make_config(), folder, seed=11, **save_kwargs)
            reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            built[kind] = folder, reference
        return built[kind]

    return get


def prompts_for(vocab: int, kind: str, lens=PROMPT_LENS) -> list[list[int]]:
    gen = torch.Generator().manual_seed(sum(map(ord, kind)))
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lens]


def params(prompt_logprobs: int | None = 1) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=2, prompt_logprobs=prompt_logprobs
    )


def top2_ids(completion) -> list[list[int]]:
    return [[t for t in lp if lp[t].rank in (1, 2)] for lp in completion.logprobs]


def assert_matches_reference(reference, prompts, outputs, label: str) -> list[float]:
    """Tokens, chosen logprobs and prompt logprobs against transformers; returns its top-2 gaps."""
    gaps = []
    for i, (prompt, output) in enumerate(zip(prompts, outputs)):
        ref_tokens, ref_top2, ref_chosen = hf_greedy(reference, prompt, NUM_TOKENS)
        gaps += top2_gaps(ref_top2)
        completion = output.outputs[0]
        ours = completion.token_ids
        identical = assert_greedy_match(ours, ref_tokens, ref_top2, top2_ids(completion), f"{label}[{i}]")
        agree = (
            len(ours) if identical else next(j for j, (a, b) in enumerate(zip(ours, ref_tokens)) if a != b)
        )
        chosen = [lp[t].logprob for t, lp in zip(ours, completion.logprobs)]
        assert chosen[:agree] == pytest.approx(ref_chosen[:agree], abs=1e-3), f"{label}[{i}] logprobs"
        if output.prompt_logprobs is None:
            continue
        assert output.prompt_logprobs[0] is None
        ours_prompt = [lp[t].logprob for t, lp in zip(prompt[1:], output.prompt_logprobs[1:])]
        assert ours_prompt == pytest.approx(hf_prompt_logprobs(reference, prompt), abs=1e-3), f"{label}[{i}]"
    return gaps


@pytest.mark.parametrize("kind", list(ARCHS))
@pytest.mark.parametrize("budget", [None, 16], ids=["one-batch+prefix-hit", "chunked-16"])
def test_matches_transformers(kind, budget, checkpoint):
    folder, reference = checkpoint(kind)
    prompts = prompts_for(reference.config.vocab_size, kind)
    llm = LLM(str(folder), dtype="float32", max_num_batched_tokens=budget, num_kv_blocks=96, block_size=BLOCK)
    batch = [{"prompt_token_ids": p} for p in prompts]
    first = llm.generate(batch, params())
    gaps = assert_matches_reference(reference, prompts, first, kind)
    decisive = sum(g > 1e-3 for g in gaps) / len(gaps)
    assert decisive > 0.9, f"reference logits are not decisive enough ({decisive:.0%} of gaps > 1e-3)"
    if budget is not None:
        return

    # Prompt logprobs need every prompt token computed, so they would bypass the prefix cache.
    again = llm.generate(batch, params(prompt_logprobs=None))
    for prompt, out in zip(prompts, again):
        assert out.num_cached_tokens == (len(prompt) - 1) // BLOCK * BLOCK
    assert sum(out.num_cached_tokens for out in again) > 0
    assert_matches_reference(reference, prompts, again, f"{kind} prefix hit")
    for i, (a, b) in enumerate(zip(first, again)):
        assert_greedy_match(
            b.outputs[0].token_ids, a.outputs[0].token_ids, _top2(a.outputs[0]), label=f"rerun[{i}]"
        )


def _top2(completion) -> list[list[tuple[int, float]]]:
    return [
        sorted(((t, lp.logprob) for t, lp in pos.items() if lp.rank in (1, 2)), key=lambda x: -x[1])
        for pos in completion.logprobs
    ]


def test_sharded_checkpoint_is_read_through_its_index(checkpoint):
    folder, _ = checkpoint("mixtral")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    assert all((folder / shard).is_file() for shard in shards)


def test_longrope_prompts_longer_than_the_original_length(checkpoint, tmp_path):
    """Prompts past `original_max_position_embeddings` are rotated with the long factors as a
    whole when prefilled in one step, as transformers does; a prompt prefilled in chunks matches
    transformers fed the same chunks (each chunk picks its factors from its own end position)."""
    folder = tiny_models.save_tiny(tiny_models.phi3_longrope_config(original_max=24), tmp_path, seed=12)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = prompts_for(reference.config.vocab_size, "long-prompts")
    llm = LLM(str(folder), dtype="float32", num_kv_blocks=96, block_size=BLOCK)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params())
    assert_matches_reference(reference, prompts, outputs, "phi3-longrope, prompts past 24")

    prompt = prompts[-1]  # 48 tokens: chunks end at 16 (short), 32 and 48 (long)
    chunked = LLM(str(folder), dtype="float32", num_kv_blocks=96, block_size=BLOCK, max_num_batched_tokens=16)
    one = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    out = chunked.generate([{"prompt_token_ids": prompt}], one)[0]
    ours = [lp[t].logprob for t, lp in zip(prompt[1:], out.prompt_logprobs[1:])]
    assert ours == pytest.approx(chunked_prompt_logprobs(reference, prompt, 16), abs=1e-3)
    whole = hf_prompt_logprobs(reference, prompt)
    assert max(abs(a - b) for a, b in zip(ours[16:], whole[16:])) > 1e-2, "chunking was meant to matter here"


@torch.inference_mode()
def chunked_prompt_logprobs(model, prompt: list[int], chunk: int) -> list[float]:
    """transformers' prompt logprobs when the prompt is fed `chunk` tokens per call through its cache."""
    cache, logits = None, []
    for start in range(0, len(prompt), chunk):
        chunk_logits, cache = hf_forward(model, prompt[start : start + chunk], cache)
        logits.append(chunk_logits)
    logprobs = torch.log_softmax(torch.cat(logits)[:-1], dim=-1)
    return logprobs.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0].tolist()

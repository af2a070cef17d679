"""Reference numbers from `transformers` on the same weights (float32, one prompt at a time).

Inputs go to the reference model's device, so the same helpers serve the GPU tests.
"""

from __future__ import annotations

import inspect

import torch


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; GPU images carry 5.17, which knows
    only the old name, so ask the model which one its forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def hf_forward(model, ids: list[int], cache=None):
    """One call through transformers' KV cache: (float32 logits [len(ids), vocab], the cache)."""
    kwargs = {} if cache is None else {_cache_kwarg(model): cache}
    out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, **kwargs)
    new_cache = out["cache"] if "cache" in out else out["past_key_values"]
    return out.logits[0].float(), new_cache


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    """Greedy tokens ignoring EOS, each step's top-2 (id, logprob) and the chosen logprobs."""
    logits, past = hf_forward(model, prompt_ids)
    logits = logits[-1]
    tokens, top2, chosen = [], [], []
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = logprobs.topk(2)
        token = int(ids[0])
        tokens.append(token)
        top2.append([(int(ids[0]), float(values[0])), (int(ids[1]), float(values[1]))])
        chosen.append(float(values[0]))
        logits, past = hf_forward(model, [token], past)
        logits = logits[-1]
    return tokens, top2, chosen


@torch.inference_mode()
def hf_prompt_logprobs(model, prompt_ids: list[int]) -> list[float]:
    """logprob of prompt token p given tokens < p, for p = 1 .. len - 1."""
    logits = model(input_ids=torch.tensor([prompt_ids], device=model.device)).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(prompt_ids[1:], device=logprobs.device)[:, None]
    return logprobs.gather(1, targets)[:, 0].tolist()


def top2_gaps(top2: list[list[tuple[int, float]]]) -> list[float]:
    return [a[1] - b[1] for a, b in top2]

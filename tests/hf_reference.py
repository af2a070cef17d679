"""Reference numbers from `transformers` on the same weights (float32, one prompt at a time)."""

from __future__ import annotations

import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int):
    """Greedy tokens ignoring EOS, each step's top-2 (id, logprob) and the chosen logprobs."""
    input_ids = torch.tensor([prompt_ids])
    out = model(input_ids=input_ids, use_cache=True)
    past, logits = out.cache, out.logits[0, -1].float()
    tokens, top2, chosen = [], [], []
    for _ in range(max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = logprobs.topk(2)
        token = int(ids[0])
        tokens.append(token)
        top2.append([(int(ids[0]), float(values[0])), (int(ids[1]), float(values[1]))])
        chosen.append(float(values[0]))
        out = model(input_ids=torch.tensor([[token]]), cache=past, use_cache=True)
        past, logits = out.cache, out.logits[0, -1].float()
    return tokens, top2, chosen


@torch.inference_mode()
def hf_prompt_logprobs(model, prompt_ids: list[int]) -> list[float]:
    """logprob of prompt token p given tokens < p, for p = 1 .. len - 1."""
    logits = model(input_ids=torch.tensor([prompt_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return logprobs.gather(1, torch.tensor(prompt_ids[1:])[:, None])[:, 0].tolist()


def top2_gaps(top2: list[list[tuple[int, float]]]) -> list[float]:
    return [a[1] - b[1] for a, b in top2]

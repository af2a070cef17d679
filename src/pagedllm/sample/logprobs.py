"""Logprobs of chosen tokens plus the top-k alternatives, as plain lists for the engine."""

from __future__ import annotations

import torch

from pagedllm.core.sched_output import TokenLogprobs


def compute_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int) -> TokenLogprobs:
    """Log-softmax `logits [N, V]` and report, per row, `token_ids[i]` first, then the top `num_top`.

    Used for sampled tokens (the sampler) and for prompt logprobs (the runner).
    """
    return gather_token_logprobs(torch.log_softmax(logits.float(), dim=-1), token_ids, num_top)


def gather_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: int) -> TokenLogprobs:
    """Same as `compute_token_logprobs` for rows that already hold log-probabilities.

    The chosen token's rank is 1 + the number of tokens with a strictly greater logprob,
    so tied tokens share the best rank among them.
    """
    token_ids = token_ids.to(device=logprobs.device, dtype=torch.long).view(-1, 1)
    chosen = logprobs.gather(1, token_ids)
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    if num_top > 0:
        top_values, top_ids = logprobs.topk(num_top, dim=-1)
        ids = torch.cat([token_ids, top_ids], dim=1)
        values = torch.cat([chosen, top_values], dim=1)
    else:
        ids, values = token_ids, chosen
    # One device->host copy per tensor; the lists are what the engine consumes.
    return TokenLogprobs(token_ids=ids.tolist(), logprobs=values.tolist(), ranks=ranks.tolist())

"""The sampler: logits of the last position of each request -> one token id each.

Order of work (as vLLM): raw logprobs for the output are taken from the untouched
logits; then allow-lists, logit bias, min_tokens bans and penalties change the
logits; greedy rows take the argmax; random rows go through temperature, top-k,
top-p and min-p and draw by inverse CDF: one uniform number per row located in the
row's cumulative distribution.

A platform may hand the sampler a fused kernel (`sample_kernel`; the CPU platform's is
ops/sampling.py): a batch that needs only greedy choice and temperature (no logprobs, logits
processors, penalties, top-k, top-p or min-p) then goes to it instead. It reads the LM head's
logits in their own dtype and applies the same inverse-CDF rule to the same uniform numbers,
without [R, V] intermediates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pagedllm.core.sched_output import TokenLogprobs
from pagedllm.sample.logprobs import gather_token_logprobs
from pagedllm.sample.metadata import SamplingMetadata
from pagedllm.sample.penalties import apply_penalties
from pagedllm.structured_output.bitmask import apply_grammar_bitmask


@dataclass(slots=True)
class SamplerOutput:
    """Sampled ids [R] and, when any row asked, their logprobs.

    `logprobs` holds `max_num_logprobs` top entries for every row; the output processor
    trims each row to what its request asked for.
    """

    sampled_token_ids: torch.Tensor
    logprobs: TokenLogprobs | None


# (out [R] int64, logits [R, V], temperature [R] float32 (0: greedy), uniform [R] float32) -> None
SampleKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


class Sampler:
    """Stateless and batched: per-step Python work is O(number of requests).

    `sample_kernel`: the platform's fused greedy/temperature kernel (None: torch only)."""

    def __init__(self, sample_kernel: SampleKernel | None = None):
        self.sample_kernel = sample_kernel

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        """Sample one token per row of `logits [R, V]`; the input tensor is not modified."""
        private = False
        if md.grammar_bitmask is not None:
            # Grammar first: every later step (logprobs included) sees only allowed tokens.
            logits = apply_grammar_bitmask(logits, md.grammar_rows, md.grammar_bitmask)
            private = True
        if self.sample_kernel is not None and fused_sampling_applies(logits, md):
            sampled = fused_sample(logits, md, self.sample_kernel)
            return SamplerOutput(sampled_token_ids=sampled, logprobs=None)
        # Half-precision logits are upcast, which already makes a private copy.
        owned = private or logits.dtype != torch.float32
        logits = logits.float()
        raw_logprobs = None
        if md.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = apply_logit_processors(logits, md, copy=not owned)
        sampled = self.sample(logits, md)
        token_logprobs = None
        if raw_logprobs is not None:
            token_logprobs = gather_token_logprobs(raw_logprobs, sampled, md.max_num_logprobs)
        return SamplerOutput(sampled_token_ids=sampled, logprobs=token_logprobs)

    def sample(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """Greedy and random choice over processed logits; may modify `logits` in place."""
        greedy = logits.argmax(dim=-1) if not md.all_random else None
        if md.all_greedy:
            return greedy
        logits.div_(md.temperature.unsqueeze(1))
        apply_top_k_top_p(logits, md.top_k, md.top_p, md.max_top_k)
        probs = torch.softmax(logits, dim=-1)
        if md.min_p is not None:
            probs = apply_min_p(probs, md.min_p)
        sampled = inverse_cdf_sample(probs, md.generators, md.default_generator)
        if greedy is not None:
            sampled = torch.where(md.greedy_mask, greedy, sampled)
        return sampled


_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fused_sampling_applies(logits: torch.Tensor, md: SamplingMetadata) -> bool:
    """Whether a fused kernel can sample this batch: greedy and temperature rows only."""
    return (
        md.max_num_logprobs is None
        and md.allowed_mask is None
        and md.logit_bias is None
        and md.min_tokens_mask is None
        and md.penalties is None
        and md.top_k is None
        and md.top_p is None
        and md.min_p is None
        and logits.dim() == 2
        and logits.shape[1] > 0
        and logits.stride(1) == 1
        and logits.dtype in _FUSED_DTYPES
    )


def fused_sample(logits: torch.Tensor, md: SamplingMetadata, kernel: SampleKernel) -> torch.Tensor:
    """`kernel`'s tokens: argmax on greedy rows, else the inverse CDF of
    softmax(logits / T) at the row's uniform number (drawn as `inverse_cdf_sample` draws it)."""
    num_rows = logits.shape[0]
    if md.all_greedy:
        temperature = torch.zeros(num_rows)  # 0 means greedy to the kernel
        uniform = temperature
    else:
        uniform = draw_uniforms(num_rows, md.generators, md.default_generator, logits.device)
        temperature = md.temperature
        if md.greedy_mask is not None:  # greedy rows hold 1.0 for the torch path
            temperature = temperature.masked_fill(md.greedy_mask, 0.0)
    sampled = torch.empty(num_rows, dtype=torch.long)
    kernel(sampled, logits, temperature, uniform)
    return sampled


def apply_logit_processors(logits: torch.Tensor, md: SamplingMetadata, copy: bool = True) -> torch.Tensor:
    """Allow-lists, logit bias, min_tokens bans, penalties.

    Returns `logits` itself when nothing applies and the batch is all greedy; otherwise a
    tensor that later steps may modify in place (a copy unless `copy` is False).
    """
    if (
        md.allowed_mask is None
        and md.logit_bias is None
        and md.min_tokens_mask is None
        and md.penalties is None
        and md.all_greedy
    ):
        return logits
    # One copy so every later step can work in place without touching the caller's tensor.
    if copy:
        logits = logits.clone()
    if md.allowed_mask is not None:
        restricted = logits[md.allowed_rows]
        logits[md.allowed_rows] = restricted.masked_fill(~md.allowed_mask, float("-inf"))
    if md.logit_bias is not None:
        b = md.logit_bias
        logits.index_put_((b.rows, b.tokens), b.values, accumulate=True)
    if md.min_tokens_mask is not None:
        m = md.min_tokens_mask
        logits[m.rows, m.tokens] = float("-inf")
    if md.penalties is not None:
        apply_penalties(logits, md.penalties)
    return logits


def apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    max_top_k: int | None = None,
) -> None:
    """Set filtered-out logits to -inf in place. Rows hold vocab_size / 1.0 where disabled."""
    if top_k is None and top_p is None:
        return
    if top_p is None:
        _apply_top_k_only(logits, top_k, max_top_k)
        return
    # One ascending sort serves both filters.
    sorted_logits, order = logits.sort(dim=-1)
    vocab_size = logits.shape[1]
    if top_k is not None:
        # Ascending: the k largest sit at positions >= V - k.
        kth_pos = (vocab_size - top_k).clamp(min=0).unsqueeze(1)
        kth = sorted_logits.gather(1, kth_pos)
        sorted_logits.masked_fill_(sorted_logits < kth, float("-inf"))
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_below = sorted_probs.cumsum(dim=-1)
    # Drop a token when it and everything less likely add up to <= 1 - p: what stays is the
    # smallest set of most likely tokens whose mass reaches p. The best token always stays.
    drop = mass_below <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    logits.scatter_(1, order, sorted_logits)


def _apply_top_k_only(logits: torch.Tensor, top_k: torch.Tensor, max_k: int | None) -> None:
    # A partial top-k of the largest k in the batch is cheaper than a full sort.
    vocab_size = logits.shape[1]
    if max_k is None:
        max_k = int(top_k.masked_fill(top_k >= vocab_size, 1).max())
    top_values = logits.topk(max_k, dim=-1).values
    kth = top_values.gather(1, (top_k.clamp(max=max_k) - 1).unsqueeze(1))
    # Disabled rows (k = vocab size) keep everything.
    kth.masked_fill_((top_k >= vocab_size).unsqueeze(1), float("-inf"))
    logits.masked_fill_(logits < kth, float("-inf"))


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero tokens whose probability is below min_p times the row's best probability."""
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return probs.masked_fill(probs < threshold, 0.0)


def inverse_cdf_sample(
    probs: torch.Tensor,
    generators: dict[int, torch.Generator],
    default_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One uniform draw per row, located in the row's cumulative distribution.

    Needs a single random number per row instead of one per vocabulary entry (drawing
    [R, V] exponentials cost ~100 ms per step for 128 x 49k on this CPU; this costs ~3 ms).
    Rows with their own generator draw from it, so a seeded request gets the same tokens
    whatever else is in the batch; the other rows share `default_generator`.
    """
    uniform = draw_uniforms(probs.shape[0], generators, default_generator, probs.device, probs.dtype)
    uniform = uniform.unsqueeze(1)
    cdf = probs.cumsum(dim=-1)
    # Scale by the row's mass so filtered (zeroed) tokens and rounding never push u past the end.
    target = uniform * cdf[:, -1:]
    sampled = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return sampled.clamp_(max=probs.shape[1] - 1)


def draw_uniforms(
    num_rows: int,
    generators: dict[int, torch.Generator],
    default_generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One uniform number in [0, 1) per row: from the row's own generator where it has one
    (a seeded request draws the same numbers whatever else is in the batch), else from
    `default_generator` (None: torch's global generator), in row order."""
    uniform = torch.empty(num_rows, device=device, dtype=dtype)
    if not generators:
        uniform.uniform_(generator=default_generator)
    else:
        for row in range(num_rows):
            uniform[row].uniform_(generator=generators.get(row, default_generator))
    return uniform

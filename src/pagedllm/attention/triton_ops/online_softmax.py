"""Device functions shared by the attention kernels: score capping, masking and the online
softmax update over one tile of keys (the streaming form of softmax from the FlashAttention
papers: a running maximum and sum per query row, the accumulator rescaled when the maximum
grows).

Scores are kept in the base-2 domain (multiplied by log2(e)) so each update uses `exp2`.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def soft_cap(scores, cap):
    """cap * tanh(scores / cap), with tanh written through the sigmoid (every Triton has it)."""
    return cap * (2.0 * tl.sigmoid(2.0 * scores / cap) - 1.0)


@triton.jit
def visible(key_pos, query_pos, key_end, window, SLIDING: tl.constexpr):
    """[rows, keys] mask: causal, inside the window (p - w, p], and before `key_end`."""
    mask = (key_pos[None, :] <= query_pos[:, None]) & (key_pos[None, :] < key_end)
    if SLIDING:
        mask = mask & (key_pos[None, :] > query_pos[:, None] - window)
    return mask


@triton.jit
def scores_of(q, k, scale, cap, mask, USE_SOFT_CAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Masked base-2 scores of query rows `q` [M, D] against keys `k` [N, D]."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    if USE_SOFT_CAP:
        s = soft_cap(s, cap)
    return tl.where(mask, s * 1.4426950408889634, float("-inf"))


@triton.jit
def update(acc, row_max, row_sum, s, v, DOT_PRECISION: tl.constexpr):
    """Fold one tile of base-2 scores `s` [M, N] and values `v` [N, D] into the running state."""
    new_max = tl.maximum(row_max, tl.max(s, 1))
    # A row that has seen no visible key yet keeps -inf; exponents are taken against 0 there,
    # which leaves its (zero) sum and accumulator as they are instead of producing NaN.
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    p = tl.exp2(s - safe_max[:, None])
    alpha = tl.exp2(row_max - safe_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, new_max, row_sum

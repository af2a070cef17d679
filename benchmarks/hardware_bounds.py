"""What the machine and the model allow: FLOPs per token, the bf16 matmul rate on the model's
own shapes, and the memory read rate, for MFU and the bandwidth bound in `compare.py`."""

from __future__ import annotations

import math
import time

from compare_table import Sizes


def model_flops(config, sizes: Sizes) -> dict[str, float]:
    """FLOPs per prompt token and per output token (matmuls 2 x params, plus attention)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    inter, vocab = config.intermediate_size, config.vocab_size
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = h * (q + 2 * kv) + q * h + 2 * h * inter + inter * h
    matmul = 2.0 * layers * per_layer
    lm_head = 2.0 * vocab * h
    # Attention (QK^T and PV): 4 x heads x head_dim FLOPs per context position, causal, per layer.
    attn = 4.0 * layers * heads * head_dim
    prompt_ctx = (sizes.a_input + 1) / 2  # mean context of a prompt token
    output_ctx = sizes.a_input + (sizes.a_output + 1) / 2  # mean context of an output token
    return {
        "matmul": matmul,
        "lm_head": lm_head,
        "prompt": matmul + attn * prompt_ctx,
        "output": matmul + lm_head + attn * output_ctx,
    }


def _projection_shapes(config) -> list[tuple[int, int]]:
    """(K, N) of one layer's matmuls: qkv, o, gate_up, down."""
    h, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    q, kv = heads * head_dim, config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    return [(h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)]


def _rate(matmul, pairs: list, flops: float, seconds: float) -> float:
    """GFLOP/s of `matmul(x, w)` over `pairs`, after a warm-up, for about `seconds`."""
    import torch

    with torch.inference_mode():
        for x, w in pairs * 3:
            matmul(x, w)
        iterations, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for x, w in pairs:
                matmul(x, w)
            iterations += 1
        elapsed = time.perf_counter() - start
    return flops * iterations / elapsed / 1e9


def measure_peak_gflops(config, rows: int = 2048, seconds: float = 2.0) -> float:
    """bf16 GFLOP/s of torch matmuls (oneDNN) on one layer's projection shapes, `rows` tokens at once."""
    import torch

    shapes = _projection_shapes(config)
    pairs = [
        (torch.randn(rows, k, dtype=torch.bfloat16), torch.randn(n, k, dtype=torch.bfloat16))
        for k, n in shapes
    ]
    flops = sum(2.0 * rows * k * n for k, n in shapes)
    return _rate(torch.nn.functional.linear, pairs, flops, seconds)


def measure_read_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s of a streaming read (torch sum over a float32 tensor far larger than the caches),
    best of `repeats`: the bound on bandwidth-limited decode, which on this shared machine
    moves between runs."""
    import torch

    data = torch.ones(megabytes * (1 << 20) // 4, dtype=torch.float32)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def bf16_bytes_per_token(flops: dict[str, float]) -> float:
    """Weight bytes one bf16 decode step reads: every matmul parameter plus the LM head (2
    FLOPs per parameter and 2 bytes per parameter, so the same number)."""
    return flops["matmul"] + flops["lm_head"]


def model_flops_utilization(
    flops: dict[str, float], peak_gflops: float, output_tps: float, total_tps: float
) -> float:
    """MFU in percent: achieved prompt + output FLOP/s over the measured bf16 peak."""
    achieved = (total_tps - output_tps) * flops["prompt"] + output_tps * flops["output"]
    return 100.0 * achieved / (peak_gflops * 1e9)


def measure_packed_gflops(config, rows: int = 2048, seconds: float = 2.0) -> float:
    """The same shapes through pagedllm's packed bf16 kernel; 0 where the kernels do not build."""
    import torch

    from pagedllm.ops import cpu_kernels
    from pagedllm.ops.packed_linear import PackedBF16Weight, packable

    if not cpu_kernels.available():
        return 0.0
    shapes = _projection_shapes(config)
    layers = []
    for k, n in shapes:
        weight = torch.randn(n, k, dtype=torch.bfloat16)
        if not packable(weight):
            return 0.0
        layers.append((torch.randn(rows, k, dtype=torch.bfloat16), PackedBF16Weight(weight)))
    return _rate(lambda x, w: w.linear(x), layers, sum(2.0 * rows * k * n for k, n in shapes), seconds)

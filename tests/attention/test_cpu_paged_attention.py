"""The compiled CPU paged-attention kernel against the torch reference backend.

Both backends get the same step (decodes, prefill chunks after cached context, fresh
prefills) and the same scattered block tables; each first writes the requests' earlier context
into its own cache (the kernel's bf16 caches with 16-token blocks use a blocked layout), then
attends. Outputs must agree. The reference gathers, pads and masks with plain torch ops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attention_steps import make_step, write_row_context

from pagedllm.attention.backends.base import BLOCKED_BF16, ROW
from pagedllm.attention.backends.cpu_paged import CPUPagedBackend
from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.ops import cpu_kernels

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="CPU kernels could not be built")


STEPS = {
    "decodes": [(5, 1), (17, 1), (0, 1), (40, 1)],
    "fresh prefills": [(0, 7), (0, 1 + 12), (0, 3)],
    "mixed with prefix hits": [(9, 1), (33, 1), (8, 12), (0, 20), (13, 5)],
    "long chunk": [(3, 1), (0, 70)],
}


@pytest.mark.parametrize(
    "dtype,block_size",
    # bf16 with 16-token blocks: the blocked layout (AVX512-BF16 and AVX2 builds)
    [(torch.float32, 4), (torch.bfloat16, 4), (torch.bfloat16, 16)],
)
@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize(
    "heads,kv_heads,window,soft_cap",
    [(6, 2, None, None), (4, 4, None, None), (4, 1, 6, None), (6, 3, None, 5.0), (4, 2, 9, 3.0)],
)
@pytest.mark.parametrize("head_dim", [32, 64])  # 64: the kernel's compile-time head size
def test_kernel_matches_reference(
    dtype, block_size, step, heads, kv_heads, window, soft_cap, head_dim, kernel_target
):
    num_blocks = 64
    requests = STEPS[step]
    torch.manual_seed(0)
    num_context = sum(c for c, _ in requests)
    context_k = torch.randn(num_context, kv_heads, head_dim).to(dtype)
    context_v = torch.randn(num_context, kv_heads, head_dim).to(dtype)
    num_tokens = sum(q for _, q in requests)
    # Strided q/k/v views of one fused projection, as the model passes them.
    qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(num_tokens, heads, head_dim)
    k = k.view(num_tokens, kv_heads, head_dim)
    v = v.view(num_tokens, kv_heads, head_dim)
    scale = head_dim**-0.5

    outputs = []
    for backend in (TorchReferenceBackend(), CPUPagedBackend()):
        md, context_slots = make_step(backend, requests, num_blocks, seed=1, block_size=block_size)
        layout = backend.kv_cache_layout(num_blocks, block_size, kv_heads, head_dim, dtype)
        cache = torch.zeros(layout.shape, dtype=dtype)
        if num_context:
            write_context(backend, cache, layout, context_k, context_v, context_slots)
        outputs.append(backend.forward(q, k, v, cache, layout, md, scale, window, 0, soft_cap))
    # The reference rounds scores and probabilities to bf16; the kernel keeps float32 scores.
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outputs[1].float(), outputs[0].float(), atol=tol, rtol=tol)


# Contexts longer than the tiled kernel's 256-key chunks, ending inside a chunk and a block; the
# chunk this step attends starts mid-block and spans several query tiles.
LONG_STEPS = {
    "long prefix hit": [(700, 90)],
    "two long chunks": [(1037, 37), (255, 300)],
    "fresh long prompt": [(0, 530)],
}


@pytest.fixture(params=["tiles", "vector"])
def prefill_path(request, kernel_target):
    """Prefill attention on the AMX tiles (skipped where the build in use has none) or forced
    onto the vector loops, which every other test of an AMX machine's native build bypasses."""
    tiles = request.param == "tiles"
    if tiles and not cpu_kernels.amx_tiles():
        pytest.skip("this build or CPU has no AMX tiles")
    switch = cpu_kernels.op("set_attention_tiles")
    previous = switch(tiles)
    yield request.param
    switch(previous)


@pytest.mark.parametrize("step", list(LONG_STEPS))
@pytest.mark.parametrize("window,soft_cap", [(None, None), (300, None), (100, 4.0)])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 9, 3), (128, 4, 2), (256, 4, 1)])
def test_long_contexts_cross_chunks_and_tiles(
    step, window, soft_cap, head_dim, heads, kv_heads, prefill_path
):
    requests = LONG_STEPS[step]
    num_blocks = sum(-(-(c + q) // 16) for c, q in requests) + 8
    ref, out = run_both(requests, heads, kv_heads, head_dim, window, soft_cap, num_blocks, seed=3)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def write_context(backend, cache, layout, keys, values, slots):
    """Store earlier tokens' K/V the way each backend stores them (its declared layout)."""
    if isinstance(backend, CPUPagedBackend):
        blocked = layout.element_order == BLOCKED_BF16
        cpu_kernels.op("reshape_and_cache")(keys, values, cache[0], cache[1], slots, blocked)
        return
    assert layout.element_order == ROW
    write_row_context(cache, keys, values, slots)


def test_row_layout_cache_matches_reference_bit_for_bit(kernel_target):
    """Outside the blocked layout, the kernel writes exactly what the reference writes."""
    torch.manual_seed(0)
    cache = torch.zeros(2, 2, 8, 4, 32)
    keys, values = torch.randn(5, 2, 32), torch.randn(5, 2, 32)
    slots = torch.tensor([3, 9, 10, 17, 30])
    expected = cache.clone()
    reference, kernel = TorchReferenceBackend(), CPUPagedBackend()
    layout = kernel.kv_cache_layout(8, 4, 2, 32, torch.float32)
    assert layout.element_order == ROW and layout == reference.kv_cache_layout(8, 4, 2, 32, torch.float32)
    write_context(reference, expected, layout, keys, values, slots)
    write_context(kernel, cache, layout, keys, values, slots)
    assert torch.equal(cache, expected)


def test_kernel_backend_declares_the_blocked_order_where_it_uses_it(kernel_target):
    """bf16 caches of 16-token blocks with head_dim % 32 == 0 are blocked where the build has
    vector paths (AVX512-BF16 or AVX2); the shape stays the reference's."""
    kernel, reference = CPUPagedBackend(), TorchReferenceBackend()
    blocked = kernel.kv_cache_layout(9, 16, 3, 64, torch.bfloat16)
    assert blocked.shape == reference.kv_cache_layout(9, 16, 3, 64, torch.bfloat16).shape
    expected = BLOCKED_BF16 if kernel_target in ("avx512_bf16", "avx2") else ROW
    assert blocked.element_order == expected
    for other in (
        (9, 8, 3, 64, torch.bfloat16),
        (9, 16, 3, 48, torch.bfloat16),
        (9, 16, 3, 64, torch.float32),
    ):
        assert kernel.kv_cache_layout(*other).element_order == ROW


def run_both(requests, heads, kv_heads, head_dim, window, soft_cap, num_blocks, dtype=torch.bfloat16, seed=0):
    """Outputs of the reference and the kernel (bf16, 16-token blocks) on one step."""
    torch.manual_seed(seed)
    num_context = sum(c for c, _ in requests)
    context_k = torch.randn(num_context, kv_heads, head_dim).to(dtype)
    context_v = torch.randn(num_context, kv_heads, head_dim).to(dtype)
    num_tokens = sum(q for _, q in requests)
    q = torch.randn(num_tokens, heads, head_dim).to(dtype)
    k = torch.randn(num_tokens, kv_heads, head_dim).to(dtype)
    v = torch.randn(num_tokens, kv_heads, head_dim).to(dtype)
    outputs = []
    for backend in (TorchReferenceBackend(), CPUPagedBackend()):
        md, context_slots = make_step(backend, requests, num_blocks, seed=seed + 1, block_size=16)
        layout = backend.kv_cache_layout(num_blocks, 16, kv_heads, head_dim, dtype)
        cache = torch.zeros(layout.shape, dtype=dtype)
        if num_context:
            write_context(backend, cache, layout, context_k, context_v, context_slots)
        outputs.append(backend.forward(q, k, v, cache, layout, md, head_dim**-0.5, window, 0, soft_cap))
    return outputs


@pytest.mark.parametrize("step", ["mixed with prefix hits", "long chunk"])
@pytest.mark.parametrize(
    "head_dim,heads,kv_heads,window,soft_cap", [(96, 6, 2, None, None), (160, 4, 1, 9, 3.0)]
)
def test_other_blocked_head_sizes_match_reference(
    step, head_dim, heads, kv_heads, window, soft_cap, kernel_target
):
    """Head sizes without a compile-time kernel (multiples of 32 but not of 64): every item,
    decodes included, takes the run-time-sized path over the blocked layout."""
    requests = STEPS[step]
    num_blocks = sum(-(-(c + q) // 16) for c, q in requests) + 8
    ref, out = run_both(requests, heads, kv_heads, head_dim, window, soft_cap, num_blocks, seed=5)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


DECODE_LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 47, 100, 129, 200, 257]


@pytest.mark.parametrize("num_seqs", [1, 5, 40])
@pytest.mark.parametrize(
    "heads,kv_heads,head_dim",
    # group sizes 1-8; 7 rows of 64 dims and 4+ of 128 take several passes over the blocks
    [(9, 3, 64), (4, 4, 64), (8, 2, 64), (7, 1, 64), (8, 1, 128), (4, 2, 128), (2, 1, 256), (6, 2, 32)],
)
@pytest.mark.parametrize("window,soft_cap", [(None, None), (20, None), (None, 4.0), (37, 2.0)])
def test_decode_matches_reference(num_seqs, heads, kv_heads, head_dim, window, soft_cap, kernel_target):
    """Decode steps (one query per sequence): contexts of every length class around the
    16-token blocks, with and without sliding windows and soft caps."""
    rng = np.random.default_rng(num_seqs * 1000 + heads * 10 + kv_heads)
    if num_seqs == 1:
        lengths = [200]
    else:  # the classes above, then random lengths: windows start at every offset in a block
        extra = rng.integers(1, 300, max(0, num_seqs - len(DECODE_LENGTHS)))
        lengths = DECODE_LENGTHS[:num_seqs] + list(extra)
        lengths = [int(n) for n in rng.permutation(lengths)]
    requests = [(n - 1, 1) for n in lengths]
    num_blocks = sum(-(-n // 16) for n in lengths) + 8
    ref, out = run_both(requests, heads, kv_heads, head_dim, window, soft_cap, num_blocks)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4), (8, 1)])
def test_single_token_tiles_of_a_chunk_match_reference(heads, kv_heads, kernel_target):
    """A chunk whose last tile holds one token (attended as a decode) after cached context,
    after decodes (which come first, as the scheduler orders them) and next to other chunks."""
    tokens_per_tile = max(1, 48 // (heads // kv_heads))
    requests = [(40, 1), (70, 1), (23, tokens_per_tile + 1), (0, 2 * tokens_per_tile + 1), (5, 9)]
    num_blocks = sum(-(-(c + q) // 16) for c, q in requests) + 8
    ref, out = run_both(requests, heads, kv_heads, 64, None, None, num_blocks)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    ref, out = run_both(requests, heads, kv_heads, 64, 11, 3.0, num_blocks)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "lengths",
    [[1100], [2000], [77, 1300], [17, 64, 1500]],  # few long items: the kernel splits them
)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (7, 1, 64), (8, 2, 128)])
@pytest.mark.parametrize("window,soft_cap", [(None, None), (150, None), (None, 3.0), (70, 2.0)])
def test_few_long_decodes_match_reference(
    lengths, heads, kv_heads, head_dim, window, soft_cap, kernel_target
):
    """Few decode items on several threads: each is cut into block ranges whose partial
    softmax results are combined."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        requests = [(n - 1, 1) for n in lengths]
        num_blocks = sum(-(-n // 16) for n in lengths) + 8
        ref, out = run_both(requests, heads, kv_heads, head_dim, window, soft_cap, num_blocks)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)

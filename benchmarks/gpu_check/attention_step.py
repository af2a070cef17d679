"""Our Triton attention kernels on the GPU against the torch reference backend, two steps of a
small batch built by hand through the attention contract.

Step 1 prefills three requests (37, 5 and 20 tokens); step 2 decodes the first two and runs a
9-token chunk of the third, all reading what step 1 cached. Each backend writes its own cache;
block ids are scattered. Returns the largest |difference| of the outputs over both steps.
"""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.attention.backends.torch_ref import TorchReferenceBackend
from pagedllm.attention.backends.triton_paged import TritonPagedBackend
from pagedllm.attention.metadata import AttentionMetadata

BLOCK_SIZE = 16
NUM_BLOCKS = 64
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 128
# (tokens cached before the step, tokens this step) per request, decodes first.
STEPS = [[(0, 37), (0, 5), (0, 20)], [(37, 1), (5, 1), (20, 9)]]


def block_tables(device: torch.device) -> torch.Tensor:
    """Four scattered blocks per request (enough for 64 tokens), none of them the null block 0."""
    ids = np.random.default_rng(0).permutation(np.arange(1, NUM_BLOCKS))[:12]
    return torch.from_numpy(ids.reshape(3, 4).astype(np.int32)).to(device)


def metadata(step: list[tuple[int, int]], table: torch.Tensor) -> AttentionMetadata:
    q_lens = np.array([q for _, q in step])
    seq_lens = np.array([c + q for c, q in step])
    qsl = np.concatenate([[0], np.cumsum(q_lens)])
    host_table = table.cpu().numpy()
    slots = [
        int(host_table[r, pos // BLOCK_SIZE]) * BLOCK_SIZE + pos % BLOCK_SIZE
        for r, (cached, q_len) in enumerate(step)
        for pos in range(cached, cached + q_len)
    ]
    device = table.device
    return AttentionMetadata(
        num_reqs=len(step),
        num_actual_tokens=int(qsl[-1]),
        query_start_loc=torch.from_numpy(qsl).to(torch.int32).to(device),
        seq_lens=torch.from_numpy(seq_lens).to(torch.int32).to(device),
        block_tables=[table],
        slot_mappings=[torch.tensor(slots, dtype=torch.int64, device=device)],
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
        num_decodes=int((q_lens == 1).sum()),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        block_size=BLOCK_SIZE,
    )


@torch.inference_mode()
def max_difference(dtype: torch.dtype, window: int | None, device: str = "cuda") -> float:
    """Largest |triton - torch| over both steps' outputs, in this dtype and sliding window."""
    dev = torch.device(device)
    backends = [TritonPagedBackend(dev), TorchReferenceBackend()]
    layouts = [b.kv_cache_layout(NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype) for b in backends]
    caches = [torch.zeros(layout.shape, dtype=dtype, device=dev) for layout in layouts]
    table = block_tables(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    worst = 0.0
    for step in STEPS:
        tokens = sum(q for _, q in step)
        q, k, v = (
            torch.randn(tokens, heads, HEAD_DIM, generator=gen, device=dev, dtype=dtype)
            for heads in (HEADS, KV_HEADS, KV_HEADS)
        )
        outputs = []
        for backend, layout, cache in zip(backends, layouts, caches):
            md = metadata(step, table)
            backend.plan(md)
            outputs.append(backend.forward(q, k, v, cache, layout, md, HEAD_DIM**-0.5, window).float())
        worst = max(worst, (outputs[0] - outputs[1]).abs().max().item())
    return worst

"""Paged attention through our Triton kernels (attention/triton_ops/): GPUs, and CPU under
Triton's interpreter.

Per layer: one `reshape_and_cache` launch writes the step's K/V through the slot mapping, then
the decodes (requests [0, num_decodes), one token each) take the decode kernel, split along
the context when few long sequences would leave the GPU idle, and every other request takes
the query-tile kernel. The tiles and the split count are planned on the host once per step
(`plan`, lazily per group size and window) and shared by all layers.

The cache keeps the reference backend's layout, [2, kv_heads, blocks, block_size, head_dim]:
one (head, block) is block_size * head_dim contiguous elements, rows of head_dim the kernels
gather per key position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagedllm.attention.backends.base import ROW, AttentionBackend, KVCacheLayout
from pagedllm.attention.metadata import AttentionMetadata
from pagedllm.attention.triton_ops.work_plan import (
    decode_splits,
    keys_per_iteration,
    plan_query_tiles,
    tokens_per_tile,
)
from pagedllm.config import ConfigError
from pagedllm.ops.triton_launch import check_runs_on, check_triton_usable

# Head sizes the kernels take: padded to a power of two inside, so any size up to this works.
MAX_HEAD_DIM = 512


@dataclass
class _StepPlan:
    query_tiles: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    splits: dict[tuple[int, int | None], int] = field(default_factory=dict)


class TritonPagedBackend(AttentionBackend):
    """See the module docstring. `decode_splits` forces the split count (tests); None decides
    per step from the device's processor count."""

    name = "triton"

    def __init__(self, device: torch.device, decode_splits: int | None = None):
        check_triton_usable(
            device,
            "--attention-backend triton: the attention kernels",
            "; on CPU use --attention-backend cpu or torch",
        )
        # Imported only now: decorating the kernels is where Triton reads TRITON_INTERPRET.
        from pagedllm.attention.triton_ops import cache_write, decode_attention, query_tile_attention

        check_runs_on(device, query_tile_attention._query_tile_kernel, "the Triton attention kernels")
        self._reshape_and_cache = cache_write.reshape_and_cache
        self._decode = decode_attention.decode_launches
        self._query_tiles = query_tile_attention.query_tile_launch
        self.device = device
        self.forced_splits = decode_splits
        # Programs a step must have to fill the device; the interpreter gains nothing from splits.
        self.num_processors = (
            torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        )

    def kv_cache_layout(self, num_blocks, block_size, num_kv_heads, head_dim, dtype) -> KVCacheLayout:
        if head_dim > MAX_HEAD_DIM:
            raise ConfigError(
                f"the Triton attention backend takes head sizes up to {MAX_HEAD_DIM}; this model's "
                f"is {head_dim}: use --attention-backend torch"
            )
        return KVCacheLayout((2, num_kv_heads, num_blocks, block_size, head_dim), dtype, ROW)

    def plan(self, md: AttentionMetadata) -> None:
        md.plan = _StepPlan()

    def _tiles(self, md: AttentionMetadata, tile_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = md.plan.query_tiles.get(tile_tokens)
        if tiles is None:
            plan = plan_query_tiles(md.query_start_loc_cpu, md.num_decodes, md.num_reqs, tile_tokens)
            device = md.seq_lens.device
            tiles = (
                torch.from_numpy(plan.request).to(device, non_blocking=True),
                torch.from_numpy(plan.first_token).to(device, non_blocking=True),
            )
            md.plan.query_tiles[tile_tokens] = tiles
        return tiles

    def _splits(self, md: AttentionMetadata, num_kv_heads: int, window: int | None) -> int:
        if self.forced_splits is not None:
            return self.forced_splits
        key = (num_kv_heads, window)
        splits = md.plan.splits.get(key)
        if splits is None:
            longest = int(np.max(md.seq_lens_cpu[: md.num_decodes]))
            visible = longest if window is None else min(longest, window)
            splits = decode_splits(md.num_decodes, num_kv_heads, visible, self.num_processors)
            md.plan.splits[key] = splits
        return splits

    def forward(
        self,
        query,
        key,
        value,
        kv_cache,
        layout,
        md,
        scale,
        sliding_window=None,
        kv_group=0,
        logits_soft_cap=None,
    ):
        num_tokens = md.num_actual_tokens
        # Every request's K/V is written before any request attends (same-step prefix hits).
        self._reshape_and_cache(key[:num_tokens], value[:num_tokens], kv_cache, md.slot_mappings[kv_group])
        output = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        table = md.block_tables[kv_group]
        num_kv_heads, head_dim = kv_cache.shape[1], kv_cache.shape[-1]
        block_n = keys_per_iteration(head_dim)
        if md.num_decodes:
            splits = self._splits(md, num_kv_heads, sliding_window)
            launches = self._decode(
                output,
                query,
                kv_cache,
                table,
                md.query_start_loc,
                md.seq_lens,
                md.num_decodes,
                scale,
                sliding_window,
                logits_soft_cap,
                splits,
                block_n,
            )
            for launch in launches:
                launch.run()
        if md.num_prefills:
            tile_tokens = tokens_per_tile(query.shape[1] // num_kv_heads, head_dim)
            tile_request, tile_first_token = self._tiles(md, tile_tokens)
            self._query_tiles(
                output,
                query,
                kv_cache,
                table,
                md.query_start_loc,
                md.seq_lens,
                tile_request,
                tile_first_token,
                tile_tokens,
                scale,
                sliding_window,
                logits_soft_cap,
                block_n,
            ).run()
        return output

"""Per-request block tables on top of the block pools, with automatic prefix caching.

The manager coordinates one or more KV-cache groups (see `kv_cache_spec`): every group has
its own pool and block list per request, and a request is only admitted, grown or hit in the
prefix cache when every group can serve it. Block ids therefore travel as a tuple with one
list per group; a model without sliding windows has exactly one group.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedllm.core.block_hash import BlockHasher
from pagedllm.core.block_pool import KVCacheBlock
from pagedllm.core.kv_cache_group import FullAttentionGroup, make_group
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec, cdiv
from pagedllm.request import Request

__all__ = ["KVCacheManager", "cdiv"]

# Per group: blocks of a prefix hit, or block ids appended to a request's tables.
GroupBlocks = tuple[list[KVCacheBlock], ...]
GroupBlockIds = tuple[list[int], ...]


class KVCacheManager:
    """Owns which physical blocks each request uses and which full blocks are cached.

    `num_blocks` is either a block count (one full-attention group, the common case) or one
    `KVCacheGroupSpec` per group. Prefix cache counters are in tokens: `prefix_cache_queries`
    counts the tokens of requests that were looked up (and then scheduled),
    `prefix_cache_hits` the tokens served from cache.
    """

    def __init__(
        self,
        num_blocks: int | Sequence[KVCacheGroupSpec],
        block_size: int,
        enable_caching: bool = True,
        hash_seed: bytes | None = None,
    ):
        specs = [KVCacheGroupSpec(None, num_blocks)] if isinstance(num_blocks, int) else list(num_blocks)
        if not specs:
            raise ValueError("the KV cache needs at least one group")
        self.specs = specs
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.groups: list[FullAttentionGroup] = [make_group(spec, block_size) for spec in specs]
        self.has_sliding_window = any(spec.sliding_window is not None for spec in specs)
        self.hasher = BlockHasher(block_size, hash_seed)
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests, in the fullest group."""
        return max(group.block_pool.usage for group in self.groups)

    @property
    def num_free_blocks(self) -> int:
        """Free blocks summed over the groups' pools."""
        return sum(group.block_pool.num_free_blocks for group in self.groups)

    def can_use_prefix_cache(self, request: Request) -> bool:
        """Prompt logprobs need the logits of every prompt token, so they bypass the cache."""
        return self.enable_caching and request.sampling_params.prompt_logprobs is None

    def get_computed_blocks(self, request: Request) -> tuple[GroupBlocks, int]:
        """Longest cached prefix every group can serve: (blocks per group, tokens they cover).

        The last known token is always recomputed (its logits are needed to sample), so only
        blocks that are full within the first num_tokens - 1 tokens are looked up. With
        block_size 4 and 8 tokens, block 1 is full only thanks to token 7::

            tokens | 0 1 2 3 | 4 5 6 7 |
            lookup |  yes    |   no    |   -> at most 4 tokens hit

        A full-attention group can serve every length up to its longest hit; a sliding group
        only lengths whose window blocks are cached. Each group in turn shortens the
        candidate length to the longest it can serve, until all agree.
        The returned blocks are not referenced yet; pass them to `allocate_slots`.
        """
        if not self.can_use_prefix_cache(request):
            return self._no_blocks(), 0
        self.hasher.update(request)
        hashes, tokens = request.block_hashes, request.all_token_ids
        num_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[list[KVCacheBlock] | None] = [None] * self.num_groups
        while True:
            for i, group in enumerate(self.groups):
                if hits[i] is None or len(hits[i]) != num_blocks:
                    hits[i] = group.longest_hit(hashes, tokens, num_blocks)
                    num_blocks = min(num_blocks, len(hits[i]))
            if all(len(h) == num_blocks for h in hits):
                return tuple(hits), num_blocks * self.block_size

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: GroupBlocks | None = None,
        num_new_computed_tokens: int = 0,
    ) -> GroupBlockIds | None:
        """Grow the request's block tables to hold the tokens it computes this step.

        Returns, per group, the ids appended to its block table (prefix-hit blocks first, then
        fresh ones), or None when some group's free pool is too small (nothing is allocated
        then; a sliding group may still have dropped blocks that fell out of its window)::

            | computed (KV present) | prefix hit (new computed) | new tokens   |
            [ b0 b1 ]               [ b2 b3 ]                   [ b4 b5 ]
            |<-- req_to_blocks ---->|<-- touched -------------->|<- popped -->|
        """
        rid = request.request_id
        hits = new_computed_blocks or self._no_blocks()
        first_allocation = rid not in self.groups[0].req_to_blocks
        total_tokens = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        fresh = []
        for group, group_hits in zip(self.groups, hits, strict=True):
            group.remove_skipped_blocks(rid, request.num_computed_tokens)
            num_fresh = group.num_new_blocks(rid, total_tokens, group_hits)
            if num_fresh > group.num_free_for(group_hits):
                return None
            fresh.append(num_fresh)
        new_ids = tuple(
            [block.block_id for block in group.allocate(rid, group_hits, num_fresh)]
            for group, group_hits, num_fresh in zip(self.groups, hits, fresh)
        )
        if first_allocation:
            self._record_lookup(request, num_new_computed_tokens)
        self._cache_full_blocks(request, min(total_tokens, request.num_tokens))
        return new_ids

    def remove_skipped_blocks(self, request: Request) -> None:
        """Return the blocks of sliding groups that the request's next query cannot see."""
        if self.has_sliding_window:
            for group in self.groups:
                group.remove_skipped_blocks(request.request_id, request.num_computed_tokens)

    def free(self, request: Request) -> None:
        """Release the request's blocks in every group, last block first (evicted first)."""
        for group in self.groups:
            group.free(request.request_id)

    def get_block_ids(self, request: Request) -> GroupBlockIds:
        """The request's whole block table, one list per group (null block id 0 where dropped)."""
        return tuple(group.block_ids(request.request_id) for group in self.groups)

    def reset_prefix_cache(self) -> bool:
        """Drop all cached hashes (only possible while no block is held in any group)."""
        pools = [group.block_pool for group in self.groups]
        if any(pool.num_free_blocks != pool.num_blocks for pool in pools):
            return False
        return all([pool.reset_prefix_cache() for pool in pools])

    def _no_blocks(self) -> GroupBlocks:
        return tuple([] for _ in self.groups)

    def _record_lookup(self, request: Request, num_hit_tokens: int) -> None:
        # Counted when the request is actually scheduled, so a request that waits for
        # free blocks across several steps is not counted once per attempt.
        if self.can_use_prefix_cache(request):
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_hit_tokens

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Enter the request's blocks that are full within `num_tokens` into each group's hash map.

        Blocks are cached as soon as they are allocated for the step that fills them, so a
        request scheduled later in the SAME step may hit them. That is safe because, in every
        layer, the runner writes the K/V of all scheduled tokens into the cache before any
        attention of that layer reads it.
        """
        if not self.enable_caching:
            return
        num_full_blocks = num_tokens // self.block_size
        rid = request.request_id
        if all(num_full_blocks <= group.num_cached_blocks[rid] for group in self.groups):
            return
        self.hasher.update(request)
        for group in self.groups:
            group.cache_full_blocks(rid, num_full_blocks, request.block_hashes, request.all_token_ids)

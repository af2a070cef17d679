"""Per-request block tables on top of the block pool, with automatic prefix caching."""

from __future__ import annotations

from pagedllm.core.block_hash import BlockHasher
from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.request import Request


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)


class KVCacheManager:
    """Owns which physical blocks each request uses and which full blocks are cached.

    Prefix cache counters are in tokens: `prefix_cache_queries` counts the tokens of requests
    that were looked up (and then scheduled), `prefix_cache_hits` the tokens served from cache.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        hash_seed: bytes | None = None,
    ):
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks)
        self.hasher = BlockHasher(block_size, hash_seed)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # How many leading blocks of each request are already entered in the hash map.
        self.num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def usage(self) -> float:
        """Fraction of usable blocks held by requests."""
        return self.block_pool.usage

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    def can_use_prefix_cache(self, request: Request) -> bool:
        """Prompt logprobs need the logits of every prompt token, so they bypass the cache."""
        return self.enable_caching and request.sampling_params.prompt_logprobs is None

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of full blocks: (blocks, number of tokens they cover).

        The last known token is always recomputed (its logits are needed to sample), so only
        blocks that are full within the first num_tokens - 1 tokens are looked up. With
        block_size 4 and 8 tokens, block 1 is full only thanks to token 7::

            tokens | 0 1 2 3 | 4 5 6 7 |
            lookup |  yes    |   no    |   -> at most 4 tokens hit

        The returned blocks are not referenced yet; pass them to `allocate_slots`.
        """
        if not self.can_use_prefix_cache(request):
            return [], 0
        self.hasher.update(request)
        bs = self.block_size
        tokens = request.all_token_ids
        hits: list[KVCacheBlock] = []
        for i in range((request.num_tokens - 1) // bs):
            block = self.block_pool.get_cached_block(request.block_hashes[i], tokens[i * bs : (i + 1) * bs])
            if block is None:
                break  # hashes chain: nothing after a miss can match
            hits.append(block)
        return hits, len(hits) * bs

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
        num_new_computed_tokens: int = 0,
    ) -> list[int] | None:
        """Grow the request's block table to hold the tokens it computes this step.

        Returns the ids appended to its block table (prefix-hit blocks first, then fresh
        ones), or None when the free pool is too small (nothing changes then)::

            | computed (KV present) | prefix hit (new computed) | new tokens   |
            [ b0 b1 ]               [ b2 b3 ]                   [ b4 b5 ]
            |<-- req_to_blocks ---->|<-- touched -------------->|<- popped -->|
        """
        hit_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.get(request.request_id, [])
        first_allocation = request.request_id not in self.req_to_blocks
        total_tokens = request.num_computed_tokens + num_new_computed_tokens + num_new_tokens
        num_fresh = max(cdiv(total_tokens, self.block_size) - len(blocks) - len(hit_blocks), 0)
        # Touching a free cached block takes it out of the free pool as well.
        num_hits_from_free = sum(1 for block in hit_blocks if block.ref_cnt == 0)
        if num_fresh > self.block_pool.num_free_blocks - num_hits_from_free:
            return None
        self.block_pool.touch(hit_blocks)
        new_blocks = hit_blocks + self.block_pool.get_new_blocks(num_fresh)
        blocks.extend(new_blocks)
        self.req_to_blocks[request.request_id] = blocks
        if first_allocation:
            self.num_cached_blocks[request.request_id] = len(hit_blocks)
            self._record_lookup(request, num_new_computed_tokens)
        self._cache_full_blocks(request, min(total_tokens, request.num_tokens))
        return [block.block_id for block in new_blocks]

    def free(self, request: Request) -> None:
        """Release the request's blocks, last block first (evicted first)."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        self.num_cached_blocks.pop(request.request_id, None)
        if blocks:
            self.block_pool.free_blocks(reversed(blocks))

    def get_block_ids(self, request: Request) -> list[int]:
        """The request's whole block table."""
        return [block.block_id for block in self.req_to_blocks.get(request.request_id, [])]

    def reset_prefix_cache(self) -> bool:
        """Drop all cached hashes (only possible while no block is held)."""
        return self.block_pool.reset_prefix_cache()

    def _record_lookup(self, request: Request, num_hit_tokens: int) -> None:
        # Counted when the request is actually scheduled, so a request that waits for
        # free blocks across several steps is not counted once per attempt.
        if self.can_use_prefix_cache(request):
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_hit_tokens

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Enter the request's blocks that are full within `num_tokens` into the hash map.

        Blocks are cached as soon as they are allocated for the step that fills them, so a
        request scheduled later in the SAME step may hit them. That is safe because, in every
        layer, the runner writes the K/V of all scheduled tokens into the cache before any
        attention of that layer reads it.
        """
        if not self.enable_caching:
            return
        rid = request.request_id
        start = self.num_cached_blocks[rid]
        end = num_tokens // self.block_size
        if end <= start:
            return
        self.hasher.update(request)
        bs = self.block_size
        tokens = request.all_token_ids
        self.block_pool.cache_full_blocks(
            self.req_to_blocks[rid][start:end],
            request.block_hashes[start:end],
            [tokens[i * bs : (i + 1) * bs] for i in range(start, end)],
        )
        self.num_cached_blocks[rid] = end

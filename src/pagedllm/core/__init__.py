"""The engine core: scheduler, KV cache manager and block pool. Pure Python, no torch."""

from pagedllm.core.block_pool import BlockPool, KVCacheBlock
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.scheduler import Scheduler, SchedulerStats

__all__ = ["BlockPool", "KVCacheBlock", "KVCacheGroupSpec", "KVCacheManager", "Scheduler", "SchedulerStats"]

"""A tensor-parallel worker process: joins the group, loads its shard, runs what rank 0 sends.

Rank 0 (the engine core's process) broadcasts one command per call: size the KV cache, allocate
it, execute a scheduled step, or shut down. Every rank executes every step on its shard (the
row-parallel layers' all-reduces and the LM head's all-gather keep them in step); only rank 0's
output goes back to the scheduler, the others' (identical: same logits, same seeded
generators) are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import signal
import sys
from dataclasses import dataclass

import torch

from pagedllm.config import CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import SchedulerOutput
from pagedllm.model.model_config import ModelConfig
from pagedllm.platforms import Platform, resolve_platform
from pagedllm.structured_output.grammar_transfer import GrammarReceiver
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.tp_group import agree_on_blocks, broadcast_command, destroy_tp_group, init_tp_group

logger = logging.getLogger(__name__)

DETERMINE, INITIALIZE, EXECUTE, SHUTDOWN = (
    "determine_kv_cache_groups",
    "initialize_kv_cache",
    "execute",
    "shutdown",
)


@dataclass(frozen=True)
class RunnerSpec:
    """What every rank builds its runner from (picklable: sent to spawned workers)."""

    engine_config: EngineConfig
    model_config: ModelConfig
    scheduler_config: SchedulerConfig
    cache_config: CacheConfig
    # None: not yet known (Ray ranks: what the dtype option means on rank 0's device, which the
    # engine core's process may lack); the executor fills it in before any rank loads.
    dtype: torch.dtype | None
    tp_size: int


def check_shardable(model_config: ModelConfig, tp_size: int) -> None:
    """Refuse, before any process starts, a model whose heads do not split over `tp_size` ranks:
    query heads must divide evenly, and KV heads too (or, fewer than the ranks, be replicated)."""
    heads, kv_heads = model_config.num_heads, model_config.num_kv_heads
    kv_ok = kv_heads % tp_size == 0 or tp_size % kv_heads == 0
    if heads % tp_size or not kv_ok:
        raise ConfigError(
            f"{model_config.architecture} has {heads} query heads and {kv_heads} KV heads, which do "
            f"not split over --tensor-parallel-size {tp_size} (query heads must divide evenly, KV "
            "heads divide evenly or be fewer and replicated); choose a size that divides both"
        )


def rank_platform(config: EngineConfig, rank: int, cuda_index: int | None = None) -> Platform:
    """Rank `rank`'s platform: the configured device, on GPUs its own: `cuda:{cuda_index}`, by
    default the replica's first GPU plus `rank` (local ranks each see every GPU; a Ray actor
    sees only its own)."""
    platform = resolve_platform(config)
    if platform.device.type != "cuda":
        return platform
    index = (platform.device.index or 0) + rank if cuda_index is None else cuda_index
    return resolve_platform(dataclasses.replace(config, device=f"cuda:{index}"))


def build_runner(spec: RunnerSpec, rank: int, platform: Platform | None = None) -> ModelRunner:
    """Rank `rank`'s runner on `platform` (default: `rank_platform`), with its shard of the weights."""
    config = spec.engine_config
    platform = platform or rank_platform(config, rank)
    return ModelRunner(
        spec.model_config,
        spec.scheduler_config,
        spec.cache_config,
        platform,
        spec.dtype,
        config.seed,
        tp_rank=rank,
        tp_size=spec.tp_size,
    )


def with_grammars(so: SchedulerOutput, convert) -> SchedulerOutput:
    """`so` with each new request's grammar replaced by `convert(grammar)` (a copy; `so` is
    untouched, rank 0 runs it as it is)."""
    if not any(new.grammar is not None for new in so.scheduled_new_reqs):
        return so
    new_reqs = [
        new if new.grammar is None else dataclasses.replace(new, grammar=convert(new.grammar))
        for new in so.scheduled_new_reqs
    ]
    return dataclasses.replace(so, scheduled_new_reqs=new_reqs)


def determine_agreed_groups(runner: ModelRunner) -> list[KVCacheGroupSpec]:
    """This rank's KV-cache groups, each cut to the fewest blocks any rank can hold."""
    groups = runner.determine_kv_cache_groups()
    counts = agree_on_blocks([g.num_blocks for g in groups])
    return [KVCacheGroupSpec(g.sliding_window, n) for g, n in zip(groups, counts)]


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker process reads (pickled) from its stdin at start."""

    rank: int
    spec: RunnerSpec
    port: int
    device_type: str
    log_level: int


def run_worker(args: WorkerArgs) -> None:
    """A worker's life (see the module docstring)."""
    rank, spec = args.rank, args.spec
    # Stopped by rank 0 (or by its group breaking), not by a Ctrl-C meant for the server.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s"
    )
    init_tp_group(rank, spec.tp_size, args.port, torch.device(args.device_type))
    try:
        runner = build_runner(spec, rank)
        grammars = GrammarReceiver()
        while True:
            kind, payload = broadcast_command()
            if kind == DETERMINE:
                determine_agreed_groups(runner)
            elif kind == INITIALIZE:
                runner.initialize_kv_cache(payload)
            elif kind == EXECUTE:
                runner.execute_model(with_grammars(payload, grammars.unpack))
            elif kind == SHUTDOWN:
                break
    finally:
        destroy_tp_group()


if __name__ == "__main__":
    run_worker(pickle.load(sys.stdin.buffer))

"""Tensor parallelism over a Ray cluster: every rank a Ray actor (`--distributed-executor-backend ray`).

The engine core's process keeps the scheduler and no weights: ranks 0..N-1 are actors, one per
bundle of the replica's placement group (bundle index = rank, `--ray-placement-strategy`), each
holding its shard. The group is formed between the actors (gloo on CPU, NCCL on GPUs) at rank
0's node address. Each call runs on every actor with the same argument (a scheduled step is
stored once in Ray's object store) and only rank 0's result comes back. The executor waits for
every rank, so a failure anywhere raises here: a dead actor raises Ray's `ActorDiedError`
(a `RayActorError`), the engine core fails and its clients see the engine dead.

Requirements on the cluster (see ray_cluster.py): the same Python environment on every node,
the model at the same path on every node, and a node of the same device kind as the ranks' for
the engine core (it chooses the device and "auto" dtype).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass

import torch

from pagedllm.config import EngineConfig
from pagedllm.core.kv_cache_spec import KVCacheGroupSpec
from pagedllm.core.sched_output import ModelRunnerOutput, SchedulerOutput
from pagedllm.platforms import Platform
from pagedllm.platforms.cpu_threads import usable_cpu_count
from pagedllm.structured_output.grammar_transfer import GrammarReceiver, GrammarSender
from pagedllm.worker import ray_cluster
from pagedllm.worker.executor import Executor
from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.tp_group import destroy_tp_group, free_port, init_tp_group
from pagedllm.worker.tp_worker import (
    RunnerSpec,
    build_runner,
    check_shardable,
    determine_agreed_groups,
    rank_platform,
    with_grammars,
)

logger = logging.getLogger(__name__)

# How long shutdown lets the actors leave their group before killing them regardless (one may
# be stuck in a collective with a dead peer).
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RankPlacement:
    """Where a rank's actor runs: its Ray node, that node's address, and its process."""

    node_id: str
    node_ip: str
    pid: int


@dataclass(frozen=True)
class RankStart:
    """What every rank actor needs to join the group and build its runner."""

    spec: RunnerSpec
    device_type: str
    master_addr: str
    port: int
    # The engine core's OMP_NUM_THREADS, if the user set one (Ray sets its own in actors).
    user_threads: str | None


def model_threads(user_threads: str | None, ranks_on_node: int) -> int:
    """CPU threads for a rank actor: the user's OMP_NUM_THREADS, else the node's cores (as Ray
    counts them, at most those this process may use) split between the replica's ranks there."""
    if user_threads:
        return int(user_threads)
    cores = min(usable_cpu_count(), int(ray_cluster.node_cpus())) or usable_cpu_count()
    return max(1, cores // ranks_on_node)


class RankWorker:
    """One tensor-parallel rank, run as a Ray actor (wrapped with `ray.remote` by RayExecutor,
    so this module imports without Ray)."""

    def __init__(self, rank: int, log_level: int):
        self.rank = rank
        self.runner: ModelRunner | None = None
        self.grammars = GrammarReceiver()
        self.tp_size = 1
        logging.basicConfig(
            level=log_level, format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s"
        )
        logging.getLogger("pagedllm").setLevel(log_level)

    def placement(self) -> RankPlacement:
        """This actor's node."""
        return RankPlacement(ray_cluster.node_id(), ray_cluster.node_ip(), os.getpid())

    def free_port(self) -> int:
        """A free port on this actor's node (rank 0's is the group's meeting point)."""
        return free_port(ray_cluster.node_ip())

    def _platform(self, config: EngineConfig, device_type: str) -> Platform:
        """This rank's platform: `device_type`, on CUDA the GPU Ray assigned the actor."""
        config = dataclasses.replace(config, device=device_type)
        cuda_index = ray_cluster.local_cuda_index() if device_type == "cuda" else None
        return rank_platform(config, self.rank, cuda_index)

    def select_dtype(self, config: EngineConfig, device_type: str) -> torch.dtype:
        """The model dtype `config.dtype` means on this rank's device ("auto": its default)."""
        return self._platform(config, device_type).select_dtype(config.dtype)

    def start(self, start: RankStart, ranks_on_node: int) -> str:
        """Join the group and load this rank's shard; returns the rank's device."""
        spec = start.spec
        self.tp_size = spec.tp_size
        # Ray sets OMP_NUM_THREADS to the actor's CPU reservation (one); the runner's thread
        # set-up honours the variable as the user's choice, so it must say what we mean.
        os.environ["OMP_NUM_THREADS"] = str(model_threads(start.user_threads, ranks_on_node))
        platform = self._platform(spec.engine_config, start.device_type)
        if spec.tp_size > 1:
            init_tp_group(
                self.rank,
                spec.tp_size,
                start.port,
                torch.device(start.device_type),
                master_addr=start.master_addr,
                local_addr=ray_cluster.node_ip(),
            )
        self.runner = build_runner(spec, self.rank, platform)
        return str(platform.device)

    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]:
        if self.tp_size == 1:
            return self.runner.determine_kv_cache_groups()
        return determine_agreed_groups(self.runner)

    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None:
        self.runner.initialize_kv_cache(groups)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput | None:
        """Run the step on this shard; only rank 0's output is sent back (the others' are equal)."""
        output = self.runner.execute_model(with_grammars(scheduler_output, self.grammars.unpack))
        return output if self.rank == 0 else None

    def stop(self) -> None:
        """Leave the group (the actor is killed next)."""
        destroy_tp_group()


class RayExecutor(Executor):
    """See the module docstring."""

    def __init__(self, spec: RunnerSpec, platform: Platform | None = None):
        """`platform`: the engine core's, when it has the ranks' device: its kind is theirs. None
        (the engine core may run where the ranks' device is absent, e.g. in a replica's CPU-only
        actor): `config.device`, else the kind the placement group's bundles or the cluster
        offer (`ray_cluster.rank_device_type`). `spec.dtype` None: the one `config.dtype` means
        on rank 0's device, asked of rank 0 before any rank loads (`self.spec` then has it)."""
        check_shardable(spec.model_config, spec.tp_size)
        ray = ray_cluster.import_ray()
        from ray.util.placement_group import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._shut_down = False
        self._grammars = GrammarSender()
        self.actors: list = []
        # Where each rank runs (tests and tools check the placement).
        self.placements: list[RankPlacement] = []
        config = spec.engine_config
        self.device_type = (
            platform.device.type if platform is not None else ray_cluster.rank_device_type(config.device)
        )
        # A replica's core started as an actor in a group reserved for its ranks (one bundle
        # each) places them there; otherwise the executor reserves its own.
        enclosing = get_current_placement_group()
        self._owns_group = enclosing is None
        if enclosing is None:
            self.placement_group = ray_cluster.rank_placement_group(
                spec.tp_size, self.device_type, config.ray_placement_strategy
            )
        elif enclosing.bundle_count != spec.tp_size:
            raise RuntimeError(
                f"the placement group this engine core runs in has {enclosing.bundle_count} bundle(s), "
                f"but --tensor-parallel-size {spec.tp_size} needs one per rank"
            )
        else:
            self.placement_group = enclosing
        try:
            actor_class = ray.remote(RankWorker)
            env = ray_cluster.actor_env()
            log_level = logging.getLogger("pagedllm").getEffectiveLevel()
            self.actors = [
                actor_class.options(
                    num_cpus=1,
                    num_gpus=1 if self.device_type == "cuda" else 0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self.placement_group, placement_group_bundle_index=rank
                    ),
                    runtime_env={"env_vars": env} if env else None,
                ).remote(rank, log_level)
                for rank in range(spec.tp_size)
            ]
            self.placements = self._placements()
            if spec.dtype is None:
                dtype = ray.get(self.actors[0].select_dtype.remote(config, self.device_type))
                spec = dataclasses.replace(spec, dtype=dtype)
            self.spec = spec
            port = ray.get(self.actors[0].free_port.remote())
            master = self.placements[0].node_ip
            start = ray.put(
                RankStart(spec, self.device_type, master, port, os.environ.get("OMP_NUM_THREADS"))
            )
            per_node = collections.Counter(self.node_ids)
            # Rank 0's device, as the engine reports it.
            self.device = self._call_all("start", start, per_rank=[per_node[n] for n in self.node_ids])
        except BaseException:
            self.shutdown()
            raise
        logger.info(
            "tensor parallelism: %d ranks as Ray actors on %s",
            spec.tp_size,
            ", ".join(
                f"rank {r}: node {p.node_ip} ({p.node_id[:8]}) pid {p.pid}"
                for r, p in enumerate(self.placements)
            ),
        )

    @property
    def node_ids(self) -> list[str]:
        """Each rank's Ray node id, by rank."""
        return [p.node_id for p in self.placements]

    def _placements(self) -> list[RankPlacement]:
        """Each actor's node, once it has started (an actor that cannot start is reported with
        what to check)."""
        ray = ray_cluster.import_ray()
        try:
            return ray_cluster.get_all([a.placement.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(
                "a tensor-parallel rank actor could not start; every Ray node needs the engine's "
                "Python environment (pagedllm, torch and Ray importable by the interpreter `ray start` "
                f"ran under). Ray reported: {exc}"
            ) from exc

    def _call_all(self, method: str, *args, per_rank: list | None = None):
        """Call `method` on every rank actor (with `args`, then `per_rank[rank]` if given) and
        wait for all; rank 0's result."""
        refs = [
            getattr(actor, method).remote(*args, *([] if per_rank is None else [per_rank[rank]]))
            for rank, actor in enumerate(self.actors)
        ]
        return ray_cluster.get_all(refs)[0]

    def determine_kv_cache_groups(self) -> list[KVCacheGroupSpec]:
        return self._call_all("determine_kv_cache_groups")

    def initialize_kv_cache(self, groups: list[KVCacheGroupSpec]) -> None:
        self._call_all("initialize_kv_cache", groups)

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        ray = ray_cluster.import_ray()
        # Stored once, read by every actor; compiled grammars travel as JSON (they do not pickle).
        step = ray.put(with_grammars(scheduler_output, self._grammars.pack))
        return self._call_all("execute_model", step)

    def shutdown(self) -> None:
        if self._shut_down:
            return
        self._shut_down = True
        ray = ray_cluster.import_ray()
        if not ray.is_initialized():
            # This process left the cluster: Ray ended the actors and the group it owned.
            return
        if self.actors:
            ray.wait(
                [a.stop.remote() for a in self.actors], num_returns=len(self.actors), timeout=STOP_TIMEOUT_S
            )
            for actor in self.actors:
                with contextlib.suppress(Exception):  # already dead
                    ray.kill(actor)
        if self._owns_group:
            ray_cluster.remove_group(self.placement_group)

"""DataParallelClient: several engine cores (replicas) behind one front end (`--data-parallel-size`).

Each replica is a whole engine core (its own scheduler, KV cache and, with
`--tensor-parallel-size`, its own ranks) in a process of its own, reached like a single core
over its connection. The front end keeps one tokenizer, one output processor and one set of
streams; this client routes each user request to a replica (`ReplicaRouter`: load and
prefix-cache affinity; the n samples of one request stay together, since they share the
prompt's blocks), sends aborts where their requests went, and merges what the replicas send
into one stream of step outputs.

A replica that dies is taken out of routing: the requests it was serving end with an
`engine_dead` error (`EngineCoreOutputs.lost`), the others keep serving. The client itself is
dead only when no replica is left.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_connections

import msgspec

from pagedllm.config import EngineConfig
from pagedllm.core.scheduler import SchedulerStats
from pagedllm.engine.core_client import EngineCoreClient, EngineDeadError
from pagedllm.engine.core_messages import EngineCoreInfo, EngineCoreOutputs, EngineCoreRequest, LostRequest
from pagedllm.engine.replica_router import ReplicaRouter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaState:
    """A snapshot of one replica, for /health and the per-replica metrics."""

    index: int
    alive: bool
    pid: int | None
    error: str | None
    stats: SchedulerStats | None
    load_tokens: int
    num_requests: int
    num_routed: int
    generation_tokens: int


def total_stats(stats: list[SchedulerStats | None], alive: list[bool]) -> SchedulerStats | None:
    """The replicas' counters summed; gauges from the live ones (KV usage: their mean, the
    pools being the same size). A dead replica's counters stay in, so totals never go back."""
    known = [(s, a) for s, a in zip(stats, alive) if s is not None]
    if not known:
        return None
    live = [s for s, a in known if a]
    return SchedulerStats(
        num_running=sum(s.num_running for s in live),
        num_waiting=sum(s.num_waiting for s in live),
        kv_cache_usage=sum(s.kv_cache_usage for s in live) / len(live) if live else 0.0,
        prefix_cache_queries=sum(s.prefix_cache_queries for s, _ in known),
        prefix_cache_hits=sum(s.prefix_cache_hits for s, _ in known),
        num_preemptions=sum(s.num_preemptions for s, _ in known),
    )


class DataParallelClient(EngineCoreClient):
    """See the module docstring. `start_replica(config, index)` starts one core and returns its
    client (a local process, or a Ray actor with the ray backend); every replica starts loading
    at once."""

    def __init__(
        self, config: EngineConfig, start_replica: Callable[[EngineConfig, int], object] | None = None
    ):
        if start_replica is None:
            start_replica = _start_replica
        self.num_replicas = config.data_parallel_size
        self.replicas = []
        try:
            for index in range(self.num_replicas):
                replica_config = dataclasses.replace(config, data_parallel_rank=index)
                self.replicas.append(start_replica(replica_config, index))
        except BaseException:
            self.shutdown()
            raise
        self.info: EngineCoreInfo | None = None
        self.router: ReplicaRouter | None = None
        self._errors: list[str | None] = [None] * self.num_replicas
        self._stats: list[SchedulerStats | None] = [None] * self.num_replicas
        self._generation_tokens = [0] * self.num_replicas
        self._shut_down = False
        # Guards `_errors` (set on the receive thread, read by the request path and snapshots).
        self._lock = threading.Lock()

    def wait_ready(self) -> EngineCoreInfo:
        """Wait until every replica is ready; any that fails to start stops them all."""
        if self.info is not None:
            return self.info
        try:
            infos = [replica.wait_ready() for replica in self.replicas]
        except BaseException:
            self.shutdown()
            raise
        # Identical configurations give identical limits, unless memory differed at start-up:
        # requests are checked against what every replica can hold.
        first = infos[0]
        self.info = msgspec.structs.replace(first, num_kv_blocks=min(i.num_kv_blocks for i in infos))
        self.router = ReplicaRouter(self.num_replicas, first.block_size)
        logger.info(
            "data parallelism: %d replicas, each holding %d KV blocks of %d tokens",
            self.num_replicas,
            self.info.num_kv_blocks,
            first.block_size,
        )
        return self.info

    # ---- requests (any thread) -----------------------------------------------------------------
    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        router = self.router
        for group in _by_user_request(requests):
            leader = group[0]
            pinned = router.replica_of(leader.prefix_leader_id) if leader.prefix_leader_id else None
            if pinned is not None:
                self.replicas[pinned].add_requests(group)
                continue
            unreachable: set[int] = set()
            while True:
                try:
                    decision = router.choose(
                        leader.prompt_token_ids, leader.cache_salt, frozenset(unreachable)
                    )
                except LookupError:
                    raise EngineDeadError(self._all_dead_message()) from None
                router.assign([r.request_id for r in group], decision, len(leader.prompt_token_ids))
                try:
                    self.replicas[decision.replica].add_requests(group)
                    break
                except EngineDeadError:
                    # Never delivered, so it may go elsewhere; the receive thread finds the
                    # replica's end of the pipe closed and ends what it was serving.
                    for request in group:
                        router.release(request.request_id)
                    unreachable.add(decision.replica)

    def abort_requests(self, request_ids: list[str]) -> None:
        by_replica: dict[int, list[str]] = {}
        for request_id in request_ids:
            replica = self.router.release(request_id)
            if replica is not None:
                by_replica.setdefault(replica, []).append(request_id)
        for replica, ids in by_replica.items():
            self.replicas[replica].abort_requests(ids)

    # ---- outputs (the receive thread) ----------------------------------------------------------
    def get_outputs(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        if self._shut_down:
            raise EngineDeadError("the engine replicas were shut down")
        router = self.router
        live = {self.replicas[r].connection: r for r in range(self.num_replicas) if router.alive[r]}
        if not live:
            raise EngineDeadError(self._all_dead_message())
        try:
            ready = wait_connections(list(live), timeout)
        except (OSError, ValueError) as exc:  # a connection closed by shutdown meanwhile
            raise EngineDeadError(self._all_dead_message()) from exc
        if not ready:
            return None
        merged = EngineCoreOutputs()
        for connection in ready:
            index = live[connection]
            try:
                outputs = self.replicas[index].get_outputs(0.0)
            except EngineDeadError as exc:
                merged.lost.extend(self._lose(index, str(exc)))
                continue
            if outputs is None:
                continue
            if outputs.stats is not None:
                self._stats[index] = outputs.stats
            generated = 0
            for output in outputs.outputs:
                generated += len(output.new_token_ids)
                if output.finished:
                    router.release(output.request_id)
                else:
                    router.add_tokens(output.request_id, len(output.new_token_ids))
            self._generation_tokens[index] += generated
            for rejected in outputs.rejected:
                router.release(rejected.request_id)
            merged.outputs.extend(outputs.outputs)
            merged.rejected.extend(outputs.rejected)
        merged.stats = total_stats(self._stats, router.alive)
        return merged

    def _lose(self, index: int, message: str) -> list[LostRequest]:
        """Replica `index` died: out of routing; its requests end with its error."""
        with self._lock:
            if self._errors[index] is None:
                self._errors[index] = message
        lost = self.router.mark_dead(index)
        survivors = sum(self.router.alive)
        logger.error(
            "engine replica %d died (%s); %d of its requests end with engine_dead, %d replicas serve on",
            index,
            message,
            len(lost),
            survivors,
        )
        return [LostRequest(request_id, f"engine replica {index} died: {message}") for request_id in lost]

    def _all_dead_message(self) -> str:
        with self._lock:
            reasons = "; ".join(f"replica {i}: {e}" for i, e in enumerate(self._errors) if e)
        return f"every engine replica stopped ({reasons or 'shut down'})"

    # ---- state -----------------------------------------------------------------------------------
    @property
    def is_alive(self) -> bool:
        return not self._shut_down and any(self._replica_alive(i) for i in range(self.num_replicas))

    def _replica_alive(self, index: int) -> bool:
        router_alive = self.router is None or self.router.alive[index]
        return router_alive and self.replicas[index].is_alive

    def replica_states(self) -> list[ReplicaState]:
        """Each replica's liveness, load and latest scheduler counters."""
        router = self.router
        with self._lock:
            errors = list(self._errors)
        states = []
        for index, replica in enumerate(self.replicas):
            alive = self._replica_alive(index)
            error = errors[index] or (None if alive else "its process stopped")
            states.append(
                ReplicaState(
                    index=index,
                    alive=alive,
                    pid=getattr(replica, "pid", None),
                    error=error,
                    stats=self._stats[index],
                    load_tokens=router.loads[index] if router else 0,
                    num_requests=router.num_requests(index) if router else 0,
                    num_routed=router.num_routed[index] if router else 0,
                    generation_tokens=self._generation_tokens[index],
                )
            )
        return states

    def shutdown(self) -> None:
        self._shut_down = True
        for replica in self.replicas:
            replica.shutdown()


def _by_user_request(requests: list[EngineCoreRequest]) -> list[list[EngineCoreRequest]]:
    """Core requests grouped so that the samples of one prompt (which name their leader in
    `prefix_leader_id`) travel with it; order kept."""
    groups: dict[str, list[EngineCoreRequest]] = {}
    for request in requests:
        leader = request.prefix_leader_id if request.prefix_leader_id in groups else request.request_id
        groups.setdefault(leader, []).append(request)
    return list(groups.values())


def _start_replica(config: EngineConfig, index: int):
    """A local process (`mp`), or an actor on the Ray cluster (`ray`)."""
    if config.distributed_executor_backend == "ray":
        from pagedllm.engine.ray_replica import RayReplicaClient

        return RayReplicaClient(config, index)
    from pagedllm.engine.mp_client import MultiprocClient

    return MultiprocClient(config, name=f"engine replica {index}")

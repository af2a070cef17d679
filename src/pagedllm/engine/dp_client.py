"""DataParallelClient: several engine cores (replicas) behind one front end (`--data-parallel-size`).

Each replica is a whole engine core (its own scheduler, KV cache and, with
`--tensor-parallel-size`, its own ranks) in a process of its own, reached like a single core
over its connection. The front end keeps one tokenizer, one output processor and one set of
streams; this client routes each user request to a replica (`ReplicaRouter`: load and
prefix-cache affinity; the n samples of one request stay together, since they share the
prompt's blocks), sends aborts where their requests went, and merges what the replicas send
into one stream of step outputs.

A replica that dies is taken out of routing: the requests it was serving end with an
`engine_dead` error (`EngineCoreOutputs.lost`), the others keep serving, and a new replica is
started in its place (`max_restarts` in all, then that slot stays empty). A replica that holds
requests but sends nothing for `watchdog_s` seconds (a hung process) is killed, and the same
follows. The client is dead only when no replica is left and none is starting.

With one replica this is also how `pagedllm serve` runs its single engine core: the same
restarts and watchdog, the router trivially choosing replica 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import select
import threading
import time
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
    restarts: int = 0


def total_stats(
    stats: list[SchedulerStats | None], alive: list[bool], retired: SchedulerStats | None = None
) -> SchedulerStats | None:
    """The replicas' counters summed, with `retired`'s (replaced replicas' last counters, so
    totals never go back); gauges from the live ones (KV usage: their mean, the pools being the
    same size)."""
    known = [(s, a) for s, a in zip(stats, alive) if s is not None]
    if not known and retired is None:
        return None
    live = [s for s, a in known if a]
    counters = [s for s, _ in known] + ([retired] if retired is not None else [])
    return SchedulerStats(
        num_running=sum(s.num_running for s in live),
        num_waiting=sum(s.num_waiting for s in live),
        kv_cache_usage=sum(s.kv_cache_usage for s in live) / len(live) if live else 0.0,
        prefix_cache_queries=sum(s.prefix_cache_queries for s in counters),
        prefix_cache_hits=sum(s.prefix_cache_hits for s in counters),
        num_preemptions=sum(s.num_preemptions for s in counters),
    )


class _ConnectionPoller:
    """Waits until some of the replicas' connections can be read.

    multiprocessing's `wait` builds and tears down a selector on every call, once per engine
    step on the receive thread; this keeps one poll object while the set of connections stays
    the same (where `select.poll` exists; elsewhere it uses `wait`)."""

    def __init__(self):
        self._connections: list | None = None
        self._poll = None
        self._by_fd: dict[int, object] = {}

    def wait(self, connections: list, timeout: float | None) -> list:
        if not hasattr(select, "poll"):
            return wait_connections(connections, timeout)
        if connections != self._connections:
            poll = select.poll()
            by_fd = {}
            for connection in connections:
                fd = connection.fileno()
                poll.register(fd, select.POLLIN)
                by_fd[fd] = connection
            self._connections, self._poll, self._by_fd = list(connections), poll, by_fd
        # A hang-up or error is reported too: reading that connection then says what happened.
        events = self._poll.poll(None if timeout is None else math.ceil(timeout * 1000))
        return [self._by_fd[fd] for fd, _ in events]


class DataParallelClient(EngineCoreClient):
    """See the module docstring. `start_replica(config, index)` starts one core and returns its
    client (a local process, or a Ray actor with the ray backend); every replica starts loading
    at once."""

    def __init__(
        self,
        config: EngineConfig,
        start_replica: Callable[[EngineConfig, int], object] | None = None,
        max_restarts: int = 0,
        watchdog_s: float | None = None,
    ):
        """`max_restarts`: replicas started in place of dead ones, in all; `watchdog_s`: the
        silence after which a replica holding requests is taken for hung (None: never)."""
        self._start_replica = start_replica or _start_replica
        self.config = config
        self.num_replicas = config.data_parallel_size
        self.max_restarts = max_restarts
        self.watchdog_s = watchdog_s
        self.num_restarts = [0] * self.num_replicas
        self._restarting: set[int] = set()
        self._poller = _ConnectionPoller()
        self.replicas = []
        try:
            for index in range(self.num_replicas):
                self.replicas.append(self._start(index))
        except BaseException:
            self.shutdown()
            raise
        self.info: EngineCoreInfo | None = None
        self.router: ReplicaRouter | None = None
        self._errors: list[str | None] = [None] * self.num_replicas
        self._stats: list[SchedulerStats | None] = [None] * self.num_replicas
        self._generation_tokens = [0] * self.num_replicas
        self._retired: SchedulerStats | None = None
        self._last_heard = [time.monotonic()] * self.num_replicas
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

    def _start(self, index: int):
        config = dataclasses.replace(self.config, data_parallel_rank=index)
        return self._start_replica(config, index)

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

    def request_snapshot(self) -> list[int]:
        asked = []
        for index, replica in enumerate(self.replicas):
            if self._replica_alive(index) and replica.request_snapshot():
                asked.append(index)
        return asked

    # ---- outputs (the receive thread) ----------------------------------------------------------
    def get_outputs(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        if self._shut_down:
            raise EngineDeadError("the engine replicas were shut down")
        router = self.router
        live = {self.replicas[r].connection: r for r in range(self.num_replicas) if router.alive[r]}
        if not live:
            if not self._restarting:
                raise EngineDeadError(self._all_dead_message())
            # Every replica is down but one is starting again: nothing to receive meanwhile.
            time.sleep(min(timeout if timeout is not None else 0.5, 0.5))
            return None
        if self.watchdog_s is not None:
            self._kill_hung(live.values())
        try:
            ready = self._poller.wait(list(live), timeout)
        except (OSError, ValueError) as exc:  # a connection closed by shutdown meanwhile
            raise EngineDeadError(self._all_dead_message()) from exc
        if not ready:
            return None
        merged = EngineCoreOutputs()
        for connection in ready:
            index = live[connection]
            try:
                # Ready already: receive without polling again.
                outputs = self.replicas[index].get_outputs(None)
            except EngineDeadError as exc:
                merged.lost.extend(self._lose(index, str(exc)))
                continue
            self._last_heard[index] = time.monotonic()
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
            merged.snapshots.extend(outputs.snapshots)
        merged.stats = total_stats(self._stats, router.alive, self._retired)
        return merged

    def _lose(self, index: int, message: str) -> list[LostRequest]:
        """Replica `index` died: out of routing; its requests end with its error; a new one
        starts in its place while restarts are left."""
        with self._lock:
            if self._errors[index] is None:
                self._errors[index] = message
        lost = self.router.mark_dead(index)
        name = self.replicas[index].name
        logger.error(
            "%s died (%s); %d of its requests end with engine_dead, %d replica(s) serve on",
            name,
            message,
            len(lost),
            sum(self.router.alive),
        )
        self._retire_stats(index)
        if self.num_restarts[index] < self.max_restarts and not self._shut_down:
            self.num_restarts[index] += 1
            self._restarting.add(index)
            threading.Thread(
                target=self._restart, args=(index,), name=f"pagedllm-restart-{index}", daemon=True
            ).start()
        elif self.max_restarts:
            logger.error("%s: no restarts left (--max-engine-restarts %d)", name, self.max_restarts)
        return [LostRequest(request_id, f"{name} died: {message}") for request_id in lost]

    def _retire_stats(self, index: int) -> None:
        """Keep a dead replica's counters in the totals; its successor counts from zero."""
        stats = self._stats[index]
        self._stats[index] = None
        if stats is None:
            return
        stats = msgspec.structs.replace(stats, num_running=0, num_waiting=0, kv_cache_usage=0.0)
        self._retired = total_stats([stats], [False], self._retired)

    def _restart(self, index: int) -> None:
        """Start a replica in slot `index` and put it in routing once it is ready."""
        old = self.replicas[index]
        old.shutdown()
        attempt = self.num_restarts[index]
        logger.warning(
            "starting a new engine core for replica %d (restart %d of %d)", index, attempt, self.max_restarts
        )
        try:
            replica = self._start(index)
            replica.wait_ready()
        except Exception as exc:
            logger.error("restarting replica %d failed: %s", index, exc)
            self._restarting.discard(index)
            return
        if self._shut_down:
            replica.shutdown()
            return
        self.replicas[index] = replica
        self._last_heard[index] = time.monotonic()
        with self._lock:
            self._errors[index] = None
        self.router.revive(index)
        self._restarting.discard(index)
        logger.warning("replica %d serves again (restart %d of %d)", index, attempt, self.max_restarts)

    def _kill_hung(self, live) -> None:
        """Kill a replica that holds requests but has sent nothing for `watchdog_s`: its
        connection then closes and it is replaced like any dead one."""
        now = time.monotonic()
        for index in live:
            silent = now - self._last_heard[index]
            if silent > self.watchdog_s and self.router.num_requests(index):
                logger.error(
                    "%s made no progress for %.0f s with requests waiting (--engine-watchdog %g): killing it",
                    self.replicas[index].name,
                    silent,
                    self.watchdog_s,
                )
                self._last_heard[index] = now
                self.replicas[index].kill()

    def _all_dead_message(self) -> str:
        with self._lock:
            reasons = "; ".join(f"replica {i}: {e}" for i, e in enumerate(self._errors) if e)
        return f"every engine replica stopped ({reasons or 'shut down'})"

    # ---- state -----------------------------------------------------------------------------------
    @property
    def is_alive(self) -> bool:
        return not self._shut_down and any(self._replica_alive(i) for i in range(self.num_replicas))

    @property
    def gave_up(self) -> bool:
        """No replica serves and none is starting: the engine is dead for good."""
        return not self.is_alive and not self._restarting

    def _replica_alive(self, index: int) -> bool:
        router_alive = self.router is None or self.router.alive[index]
        return router_alive and index not in self._restarting and self.replicas[index].is_alive

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
                    restarts=self.num_restarts[index],
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

    name = "engine core" if config.data_parallel_size == 1 else f"engine replica {index}"
    return MultiprocClient(config, name=name)

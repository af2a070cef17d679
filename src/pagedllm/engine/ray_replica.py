"""RayReplicaClient: one data-parallel replica's engine core as an actor on a Ray cluster.

With `--distributed-executor-backend ray` and `--data-parallel-size N`, the front end (on the
node where `pagedllm serve` runs) reserves a placement group per replica, one bundle per
tensor-parallel rank, and starts the replica's engine core as an actor in the group's first
bundle (it holds no model weights, so it reserves no CPU of its own). The core's executor
places its rank actors in the same group (`placement_group_capture_child_tasks`), so a
replica's scheduler and its ranks stay together, on one node with PACK.

The core connects back to the front end over a socket (`multiprocessing.connection`, an
authentication key per replica) and speaks the same messages a local core speaks over its pipe.
The front end listens on its node's address as Ray knows it; nothing else is opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from multiprocessing.connection import Listener

from pagedllm.config import EngineConfig
from pagedllm.engine.connected_client import ConnectedCoreClient
from pagedllm.worker.ray_cluster import (
    actor_env,
    connect_ray,
    import_ray,
    node_ip,
    rank_placement_group,
    remove_group,
)

logger = logging.getLogger(__name__)

# How long a replica's core may take to connect back once its actor started (it connects
# before loading the model, so this covers only the actor's start-up).
CONNECT_TIMEOUT_S = 120.0


class EngineCoreActor:
    """The Ray actor class a replica's core runs in (decorated with `ray.remote` at use)."""

    def describe(self) -> tuple[int, str, str]:
        """(pid, node IP, node id) of the actor's process."""
        import ray

        return os.getpid(), node_ip(), ray.get_runtime_context().get_node_id()

    def serve(self, config: EngineConfig, address: tuple[str, int], authkey: bytes, log_level: int) -> None:
        """Connect to the front end and run the core until it is shut down or the front end goes."""
        from multiprocessing.connection import Client

        from pagedllm.engine.core_process import run_engine_core_process

        run_engine_core_process(config, Client(address, authkey=authkey), log_level)


class RayReplicaClient(ConnectedCoreClient):
    """Starts replica `index`'s placement group and core actor; `wait_ready` waits for its model."""

    def __init__(self, config: EngineConfig, index: int, log_level: int | None = None):
        super().__init__(f"engine replica {index}")
        ray = import_ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        connect_ray(config.ray_address)
        if log_level is None:
            log_level = logging.getLogger().getEffectiveLevel()
        device_type = (config.device or _cluster_device_type()).split(":")[0]
        self._group = rank_placement_group(
            config.tensor_parallel_size, device_type, config.ray_placement_strategy
        )
        authkey = os.urandom(32)
        self._listener = Listener((node_ip(), 0), authkey=authkey)
        self._accepted: list = []
        self._accept_thread = threading.Thread(
            target=self._accept, name=f"pagedllm-accept-replica-{index}", daemon=True
        )
        self._accept_thread.start()
        try:
            self._actor = (
                ray.remote(EngineCoreActor)
                .options(
                    num_cpus=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self._group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                    ),
                    runtime_env={"env_vars": actor_env()},
                )
                .remote()
            )
            self._pid, self.node_ip, self.node_id = ray.get(self._actor.describe.remote())
            self._serving = self._actor.serve.remote(config, self._listener.address, authkey, log_level)
        except BaseException:
            self._release()
            raise
        logger.info(
            "%s: core actor on node %s (pid %d), %d rank bundle(s), %s",
            self.name,
            self.node_ip,
            self._pid,
            config.tensor_parallel_size,
            config.ray_placement_strategy,
        )

    def _accept(self) -> None:
        # OSError: closed before the core connected (it failed, or shutdown came first).
        with contextlib.suppress(OSError):
            self._accepted.append(self._listener.accept())

    def _connect(self) -> None:
        ray = import_ray()
        waited = 0.0
        while not self._accepted:
            finished, _ = ray.wait([self._serving], timeout=0.5)
            if finished:
                # The actor returned or failed before connecting: ray.get raises its error.
                ray.get(self._serving)
                raise RuntimeError(f"the {self.name} actor ended before connecting")
            waited += 0.5
            if waited > CONNECT_TIMEOUT_S:
                raise RuntimeError(f"the {self.name} actor did not connect within {CONNECT_TIMEOUT_S:g} s")
        self._conn = self._accepted[0]
        self._listener.close()

    @property
    def pid(self) -> int | None:
        return self._pid

    def _exit_description(self) -> str:
        ray = import_ray()
        finished, _ = ray.wait([self._serving], timeout=1.0)
        if not finished:
            return "its connection closed"
        try:
            ray.get(self._serving)
        except Exception as exc:  # ActorDiedError, or the core's own error
            return f"actor ended: {type(exc).__name__}"
        return "actor returned"

    def kill(self) -> None:
        import_ray().kill(self._actor)

    def _core_running(self) -> bool:
        return True  # a dead actor closes its socket: the receive path finds out at once

    def _stop_core(self) -> None:
        ray = import_ray()
        ray.wait([self._serving], timeout=10)
        self._release()

    def _release(self) -> None:
        ray = import_ray()
        actor = getattr(self, "_actor", None)
        if actor is not None:
            ray.kill(actor)
        self._listener.close()
        remove_group(self._group)


def _cluster_device_type() -> str:
    """cuda when the cluster has GPUs (every rank then takes one), else cpu."""
    return "cuda" if import_ray().cluster_resources().get("GPU", 0) > 0 else "cpu"

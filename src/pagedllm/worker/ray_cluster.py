"""Joining a Ray cluster and reserving room on it: what every Ray-placed part of pagedllm needs.

Ray is optional (`pip install 'pagedllm[ray]'`), so this module imports it inside functions:
pagedllm loads and runs without it. The cluster is the user's: `connect_ray` only joins one that
is already running (never starting a private one silently), and `rank_placement_group`
reserves one bundle per tensor-parallel rank, so a replica's ranks are placed together (or
spread, by strategy) before any of them starts loading weights.

Every node must run the same Python environment (the same pagedllm, torch and Ray versions,
importable by the interpreter `ray start` ran under) and see the model at the same path: actors
import pagedllm from their node's environment and load the checkpoint the engine core resolved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

from pagedllm.config import ConfigError

logger = logging.getLogger(__name__)

# How long a placement group may stay pending before the cluster is judged too small for it.
PLACEMENT_TIMEOUT_S = 60.0
# How long to try to reach an explicit cluster address before calling it unreachable (ray.init
# itself retries for minutes against an address nothing listens on).
CONNECT_PROBE_TIMEOUT_S = 5.0
# Environment variables a rank actor gets from the engine core's process, as the `mp` backend's
# workers inherit them: pagedllm's own switches (PAGEDLLM_*), Triton's CPU interpreter, and the
# OpenMP spin policy pagedllm sets before torch loads.
FORWARDED_ENV = ("TRITON_INTERPRET", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
FORWARDED_ENV_PREFIX = "PAGEDLLM_"


def import_ray():
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "--distributed-executor-backend ray needs Ray, which is not installed: "
            "pip install 'pagedllm[ray]' (on every node of the cluster)"
        ) from exc
    return ray


def _probe(address: str) -> None:
    """Raise a ConfigError at once when nothing listens at `address` (host:port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port (e.g. a ray:// client address): let ray.init judge it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc}); start its head with `ray start --head "
            "--port <port>` or pass the head's address (--ray-address host:port)"
        ) from exc


def connect_ray(address: str | None = None) -> None:
    """Join the Ray cluster at `address` (None: $RAY_ADDRESS, else the one started on this
    node) unless this process already has; never starts a new cluster."""
    ray = import_ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot join a Ray cluster ({exc}); start one with `ray start --head` on this node "
            "(and `ray start --address <head>:6379` on the others), or pass --ray-address host:port"
        ) from exc
    logger.info("joined the Ray cluster at %s (%s)", address, describe_nodes())


def node_ip() -> str:
    """The IP address Ray knows this process's node by (what other nodes reach it at)."""
    return import_ray().util.get_node_ip_address()


def node_id() -> str:
    """The Ray node id of this process's node."""
    return import_ray().get_runtime_context().get_node_id()


def node_cpus(node: str | None = None) -> float:
    """The CPUs Ray counts on `node` (default: this process's), as `ray start --num-cpus` set them."""
    node = node or node_id()
    for info in import_ray().nodes():
        if info["NodeID"] == node:
            return info["Resources"].get("CPU", 0.0)
    raise RuntimeError(f"Ray node {node} is not in the cluster's node table")


def local_cuda_index() -> int:
    """The index, among this process's visible CUDA devices, of the GPU Ray assigned it.

    Ray narrows CUDA_VISIBLE_DEVICES to the assigned GPU (so it is cuda:0) unless told not to
    (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES), in which case the id is the index itself."""
    gpu_ids = [str(g) for g in import_ray().get_gpu_ids()]
    if not gpu_ids:
        raise RuntimeError("this Ray actor was assigned no GPU; its bundle must request one")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",")]
        if gpu_ids[0] in ids:
            return ids.index(gpu_ids[0])
    return int(gpu_ids[0])


def actor_env() -> dict[str, str]:
    """The `runtime_env` variables a pagedllm actor takes from this process (FORWARDED_ENV)."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith(FORWARDED_ENV_PREFIX) or name in FORWARDED_ENV
    }


def describe_nodes() -> str:
    """The live nodes and their resources, for messages ("2 nodes: 10.0.0.1 (CPU 8, GPU 2), ...")."""
    nodes = [n for n in import_ray().nodes() if n.get("Alive")]
    parts = []
    for n in nodes:
        res = n["Resources"]
        shown = ", ".join(f"{k} {res[k]:g}" for k in ("CPU", "GPU") if k in res)
        parts.append(f"{n['NodeManagerAddress']} ({shown or 'no CPU/GPU'})")
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}: " + ", ".join(parts)


def rank_device_type(device: str | None = None) -> str:
    """The ranks' device kind ("cuda" or "cpu"): `device`'s (the user's --device) if given, else
    what the placement group this process runs in reserves, else GPUs if the cluster has any."""
    if device:
        return device.split(":")[0]
    ray = import_ray()
    from ray.util.placement_group import get_current_placement_group

    group = get_current_placement_group()
    if group is not None:
        return "cuda" if any(b.get("GPU", 0) > 0 for b in group.bundle_specs) else "cpu"
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def rank_bundle(device_type: str) -> dict[str, float]:
    """What one rank reserves: a CPU, and on CUDA a GPU too."""
    return {"GPU": 1.0, "CPU": 1.0} if device_type == "cuda" else {"CPU": 1.0}


def rank_placement_group(
    num_ranks: int, device_type: str, strategy: str = "PACK", timeout_s: float = PLACEMENT_TIMEOUT_S
):
    """A placement group of one `rank_bundle` per rank, placed (waits up to `timeout_s`); a
    ConfigError naming what the cluster lacks if it cannot be placed in time."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [rank_bundle(device_type) for _ in range(num_ranks)]
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if ready:
        return group
    remove_placement_group(group)
    need = ", ".join(f"{k} {v * num_ranks:g}" for k, v in bundles[0].items())
    per_node = {
        "STRICT_PACK": "all on one node",
        "STRICT_SPREAD": f"each on a different node ({num_ranks} nodes)",
    }.get(strategy, "on any nodes")
    total = ray.cluster_resources()
    free = ray.available_resources()
    have = ", ".join(f"{k} {free.get(k, 0):g} free of {total.get(k, 0):g}" for k in bundles[0])
    raise ConfigError(
        f"the Ray cluster could not place {num_ranks} rank bundle(s) of {bundles[0]} ({need} in all, "
        f"{per_node}; --ray-placement-strategy {strategy}) within {timeout_s:g} s: it has {have}; "
        f"{describe_nodes()}. Add nodes or resources (ray start --num-cpus/--num-gpus), free some, "
        "or choose a looser --ray-placement-strategy"
    )


def remove_group(group) -> None:
    """Remove a placement group (its bundles' resources go back to the cluster)."""
    from ray.util.placement_group import remove_placement_group

    with contextlib.suppress(Exception):  # already removed, or the cluster is gone
        remove_placement_group(group)


def get_all(refs: list, timeout_s: float | None = None) -> list:
    """The values of `refs`, raising the first failure as soon as it happens (ray.get of a list
    would wait for the others, which may be blocked in a collective with the failed one)."""
    ray = import_ray()
    pending = list(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            raise TimeoutError(f"{len(pending)} Ray call(s) still running after {timeout_s:g} s")
        ray.get(ready)  # raises the call's exception (ActorDiedError when its actor is gone)
    return ray.get(refs)

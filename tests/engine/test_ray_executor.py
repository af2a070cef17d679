"""Tensor parallelism on a real two-node Ray cluster (`--distributed-executor-backend ray`).

The test starts its own cluster on this machine (a head and a second node, each offering one
CPU and a resource naming it) under a private temp dir, and ends it by killing the processes it
started: `ray stop` would end every Ray cluster on the machine. A TP=2 tiny Llama with
STRICT_SPREAD placement must put its two rank actors on the two nodes, generate what the `mp`
backend's two local ranks generate (a batch of four prompts with chunked prefill, then again as
prefix-cache hits), and leave no actor, placement group or worker process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest
from test_tensor_parallel_engine import chunked_llm, four_prompts, generate, generate_twice, top2

import tiny_models
from numerics import assert_greedy_match
from pagedllm import SamplingParams
from pagedllm.engine.core_client import EngineDeadError
from pagedllm.worker.ray_executor import RayExecutor
from pagedllm.worker.tp_group import free_port

ray = pytest.importorskip("ray")


def _dead(pid: int, within: float = 10.0) -> bool:
    """Whether `pid` exits within `within` s: gone, or a zombie its parent (Ray's raylet) has not
    reaped yet. A SIGKILLed process with gigabytes mapped can take a moment to tear down."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def ray_start(temp_dir: str, *args: str) -> None:
    """`ray start` one node of the test's cluster (the venv's Ray, under `temp_dir`)."""
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        *args,
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # Fixed defaults (52365) would collide between the two nodes and with a user's cluster.
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes of the cluster under `temp_dir`: its daemons name the dir on their command
    line; workers and agents are their children (renamed `ray::...`, so found through them)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
            found[proc.pid] = proc
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update((child.pid, child) for child in proc.children(recursive=True))
    return list(found.values())


def stop_cluster(temp_dir: str) -> None:
    """End the cluster under `temp_dir` (and nothing else): SIGTERM, then SIGKILL after 1 s (the
    GCS and raylets take many seconds to shut down gracefully; nothing of theirs is kept)."""
    procs = cluster_processes(temp_dir)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=1)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def two_node_cluster():
    """The address of a fresh two-node Ray cluster on 127.0.0.1 (nodes "node_a" and "node_b"),
    ended after the test however it went."""
    # Short: Ray's unix socket paths under it must stay within ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    port = free_port()
    try:
        ray_start(
            temp_dir,
            "--head",
            f"--port={port}",
            f"--dashboard-port={free_port()}",
            "--include-dashboard=false",
            f"--resources={json.dumps({'node_a': 1})}",
        )
        ray_start(temp_dir, f"--address=127.0.0.1:{port}", f"--resources={json.dumps({'node_b': 1})}")
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout:g} s: {what}")
        time.sleep(0.1)


def assert_nothing_left(executor: RayExecutor) -> None:
    """The executor's placement group is removed, its CPUs free, its actors and their processes gone."""
    assert ray.util.placement_group_table(executor.placement_group)["state"] == "REMOVED"
    wait_for(lambda: ray.available_resources().get("CPU") == 2.0, "both nodes' CPUs free")
    for actor in executor.actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.placement.remote(), timeout=30)
    wait_for(lambda: not any(psutil.pid_exists(p.pid) for p in executor.placements), "rank processes gone")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_models.save_tiny(tiny_models.llama_config(), tmp_path_factory.mktemp("llama"), seed=3)


@pytest.fixture(scope="module")
def local_ranks(folder):
    """What two local (`mp`) ranks generate for `four_prompts()`."""
    return generate(folder, 2, four_prompts())


def test_ranks_on_two_ray_nodes_generate_what_local_ranks_do(two_node_cluster, folder, local_ranks):
    prompts = four_prompts()
    local, local_rerun = local_ranks
    on_ray = dict(
        distributed_executor_backend="ray",
        ray_address=two_node_cluster,
        ray_placement_strategy="STRICT_SPREAD",
    )

    llm = chunked_llm(folder, 2, **on_ray)
    try:
        executor = llm.engine.engine_core.executor
        assert isinstance(executor, RayExecutor)
        nodes = {
            name: node["NodeID"]
            for node in ray.nodes()
            for name in ("node_a", "node_b")
            if node["Alive"] and name in node["Resources"]
        }
        assert sorted(executor.node_ids) == sorted(nodes.values()), (executor.node_ids, nodes)
        # The engine core (this process) holds the scheduler, no shard.
        assert os.getpid() not in {p.pid for p in executor.placements}
        remote, remote_rerun = generate_twice(llm, prompts)
    finally:
        llm.engine.shutdown()
    assert_nothing_left(executor)

    for i, prompt in enumerate(prompts):
        reference = local[i].outputs[0]
        for label, outputs in (("batch", remote), ("prefix hit", remote_rerun)):
            assert_greedy_match(
                outputs[i].outputs[0].token_ids, reference.token_ids, top2(reference), label=f"{label} [{i}]"
            )
        assert remote_rerun[i].num_cached_tokens == local_rerun[i].num_cached_tokens > 0
        ours = [lp[t].logprob for t, lp in zip(prompt[1:], remote[i].prompt_logprobs[1:])]
        theirs = [lp[t].logprob for t, lp in zip(prompt[1:], local[i].prompt_logprobs[1:])]
        assert ours == pytest.approx(theirs, abs=1e-4), f"prompt logprobs [{i}]"

    # A rank whose process dies mid-request ends it with the engine dead (no hang), and the
    # engine still shuts down without leaving anything behind.
    llm = chunked_llm(folder, 2, **on_ray)
    executor = llm.engine.engine_core.executor
    rank1 = executor.placements[1].pid
    timer = threading.Timer(0.5, os.kill, (rank1, signal.SIGKILL))  # the request decodes for seconds
    timer.start()
    try:
        with pytest.raises(EngineDeadError):
            llm.generate(
                [{"prompt_token_ids": [5] * 20}],
                SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True),
            )
        assert _dead(rank1)
    finally:
        timer.cancel()
        llm.engine.shutdown()
    assert_nothing_left(executor)


def test_replicas_as_ray_actors_on_two_nodes_generate_what_local_ranks_do(
    two_node_cluster, folder, local_ranks
):
    """`--data-parallel-size 2` on Ray: each replica's engine core is an actor in its own
    placement group (one CPU bundle each, so one per node here), reached over a socket."""
    prompts = four_prompts()
    local, local_rerun = local_ranks
    llm = chunked_llm(
        folder, 1, data_parallel_size=2, distributed_executor_backend="ray", ray_address=two_node_cluster
    )
    try:
        replicas = llm.engine.client.replicas
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert {r.node_id for r in replicas} == nodes and len(nodes) == 2
        assert os.getpid() not in {r.pid for r in replicas}
        remote, remote_rerun = generate_twice(llm, prompts)
        states = llm.engine.client.replica_states()
    finally:
        llm.engine.shutdown()
    assert all(s.alive and s.num_routed > 0 for s in states), states
    for i in range(len(prompts)):
        reference = local[i].outputs[0]
        for label, outputs in (("batch", remote), ("prefix hit", remote_rerun)):
            assert_greedy_match(
                outputs[i].outputs[0].token_ids, reference.token_ids, top2(reference), label=f"{label} [{i}]"
            )
        assert remote_rerun[i].num_cached_tokens == local_rerun[i].num_cached_tokens > 0
    # Each replica's group removed, its CPU free, its core actor's process gone.
    wait_for(lambda: ray.available_resources().get("CPU") == 2.0, "both nodes' CPUs free")
    assert {t["state"] for t in ray.util.placement_group_table().values()} == {"REMOVED"}
    wait_for(lambda: not any(psutil.pid_exists(r.pid) for r in replicas), "replica processes gone")

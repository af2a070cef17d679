"""Pinning an engine core's threads (main thread alone on the first core) and the server's
threads (the other cores), checked in child processes so that pytest's own threads stay put."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Starts two extra threads, pins as the engine core would (its model threads on every usable
# core), and reports every thread's cores as the OS sees them.
_CHILD = """
import json, os, sys, threading
from pagedllm.platforms.cpu_threads import pin_engine_core_threads, pin_frontend_threads
release = threading.Event()
threads = [threading.Thread(target=release.wait) for _ in range(2)]
for t in threads:
    t.start()
usable = sorted(os.sched_getaffinity(0))
role, num_threads = sys.argv[1], int(sys.argv[2])
if role == "core":
    cores = pin_engine_core_threads(num_threads if num_threads > 0 else len(usable))
else:
    import subprocess
    from pagedllm.platforms.cpu_threads import unpinned_cores
    cores = sorted(usable[1:])
    pin_frontend_threads(cores)
    probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    with unpinned_cores():  # as MultiprocClient starts a core
        spawned = json.loads(subprocess.run(probe, capture_output=True, text=True).stdout)
    spawned_after = json.loads(subprocess.run(probe, capture_output=True, text=True).stdout)
late = threading.Thread(target=release.wait)
late.start()  # started after pinning: inherits the main thread's cores
pid = os.getpid()
affinity = {
    ("main" if int(tid) == pid else tid): sorted(os.sched_getaffinity(int(tid)))
    for tid in os.listdir(f"/proc/{pid}/task")
    if int(tid) != late.native_id
}
late_cores = sorted(os.sched_getaffinity(late.native_id))
release.set()
report = {"usable": usable, "cores": cores, "affinity": affinity, "late": late_cores}
if role != "core":
    report.update(spawned=spawned, spawned_after=spawned_after)
print(json.dumps(report))
"""


def _run(role: str, num_threads: int = 0, pin: str = "1") -> dict:
    env = {**os.environ, "PAGEDLLM_PIN_THREADS": pin}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, role, str(num_threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    if len(report["usable"]) < 2:  # this process may have been confined meanwhile
        pytest.skip("needs 2 usable cores")
    return report


needs_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores"
)


@needs_two_cores
def test_the_core_keeps_its_main_thread_alone_on_the_first_core():
    r = _run("core")
    usable = r["usable"]
    assert r["cores"] == usable[1:]
    assert r["affinity"]["main"] == usable[:1]
    others = [cores for tid, cores in r["affinity"].items() if tid != "main"]
    assert len(others) >= 2 and all(cores == usable[1:] for cores in others)
    assert r["late"] == usable[:1]  # why the core pins only once its threads exist


@needs_two_cores
def test_the_server_keeps_to_the_cores_its_core_left_it():
    r = _run("frontend")
    assert all(cores == r["usable"][1:] for cores in r["affinity"].values())
    assert r["late"] == r["usable"][1:]
    # A core it starts (a restart too) gets every core back; the server's thread stays confined.
    assert r["spawned"] == r["usable"]
    assert r["spawned_after"] == r["usable"][1:]


@needs_two_cores
def test_nothing_is_pinned_when_switched_off_or_when_the_model_threads_leave_cores_free():
    for r in (_run("core", pin="0"), _run("core", num_threads=1)):
        assert r["cores"] == []
        assert all(cores == r["usable"] for cores in r["affinity"].values())

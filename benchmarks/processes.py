"""Processes for benchmarks/compare.py: engines and servers started in sessions of their own
(so a timeout or Ctrl-C ends their children too), with logs, health waits and clean stops."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_logged(command: list[str], log: Path, env: dict | None = None, timeout: float = 3600) -> None:
    """Run to completion with output appended to `log`; raise with the log's tail on failure."""
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        # A session of its own, so that a timeout or Ctrl-C also ends the engine's child processes.
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except BaseException:
            stop_group(proc)
            raise
    if returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} exited {returncode}:\n{tail(log)}")


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return env | (extra or {})


class Server:
    """A server process started in its own session, so that its whole group can be stopped."""

    def __init__(self, name: str, command: list[str], port: int, log: Path, env: dict | None = None):
        self.name, self.port, self.log = name, port, log
        self.base_url = f"http://127.0.0.1:{port}"
        self._file = log.open("a")
        self._file.write(f"\n$ {' '.join(command)}\n")
        self._file.flush()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            command, stdout=self._file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.startup_s: float | None = None

    def wait_healthy(self, timeout: float) -> float:
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode} while starting:\n{tail(self.log)}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        self.startup_s = time.perf_counter() - self.started
                        return self.startup_s
            except (urllib.error.URLError, OSError):
                pass
            # Polled often: start-up is a reported figure, and a coarse poll rounds it (0.25 s
            # steps made two equal start-ups differ by 6%).
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_group(self.proc)
        self._file.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def fresh_connections():
    """Make `bench serve`'s client open a new connection per request, for every server alike.

    llama-server (cpp-httplib) closes a keep-alive connection after 5 requests; aiohttp then
    sends the 6th on the closed socket and reports ServerDisconnectedError. A fresh TCP
    connection on 127.0.0.1 costs well under a millisecond.
    """
    import aiohttp

    original = aiohttp.TCPConnector

    class FreshConnector(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, force_close=True, **kwargs)

    aiohttp.TCPConnector = FreshConnector
    try:
        yield
    finally:
        aiohttp.TCPConnector = original

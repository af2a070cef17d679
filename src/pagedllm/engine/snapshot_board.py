"""SnapshotBoard: the latest `SchedulerSnapshot` of each replica, fetched on demand.

A caller on an event loop asks for fresh snapshots; the board sends one `RequestSnapshot` to
every live core (callers arriving while a round is out wait on that same round, so ten browser
tabs polling cost one round), and the receive thread posts the answers as they come with the
step outputs. A round ends when every replica asked has answered, or at the caller's timeout
(a replica that died meanwhile never answers); the caller then gets the latest of each.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from pagedllm.core.snapshot import SchedulerSnapshot


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class SnapshotBoard:
    """See the module docstring. `request_snapshot()` asks the cores and returns the replicas asked."""

    def __init__(self, request_snapshot: Callable[[], list[int]]):
        self._request_snapshot = request_snapshot
        self._lock = threading.Lock()
        self._latest: dict[int, SchedulerSnapshot] = {}
        self._outstanding: set[int] = set()
        self._round_started = 0.0
        self._waiters: list[asyncio.Future] = []

    async def fresh(self, timeout: float) -> list[SchedulerSnapshot]:
        """The latest snapshot of each replica once the current round is answered (or after
        `timeout` s), ordered by replica; a caller joining a round out already shares it."""
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.append(future)
            # A round older than the timeout lost an answer (a replica died): start anew.
            if not self._outstanding or time.monotonic() - self._round_started > timeout:
                self._round_started = time.monotonic()
                # Asked under the lock, so no answer is posted before the round is recorded;
                # sending cannot wait on the receive thread (the core reads its pipe on a
                # thread of its own).
                self._outstanding = set(self._request_snapshot())
                if not self._outstanding:
                    self._wake_all()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            with self._lock:
                if future in self._waiters:
                    self._waiters.remove(future)
        with self._lock:
            return [self._latest[replica] for replica in sorted(self._latest)]

    def post(self, snapshots: list[SchedulerSnapshot]) -> None:
        """From the receive thread: the snapshots one step brought."""
        with self._lock:
            for snapshot in snapshots:
                self._latest[snapshot.replica] = snapshot
                self._outstanding.discard(snapshot.replica)
            if not self._outstanding:
                self._wake_all()

    def _wake_all(self) -> None:
        # Called with the lock held; futures belong to their loops, so wake them there.
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            future.get_loop().call_soon_threadsafe(_resolve, future)

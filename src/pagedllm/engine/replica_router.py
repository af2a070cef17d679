"""ReplicaRouter: which data-parallel replica serves a request, by load and prefix-cache affinity.

Each replica's load is the tokens it holds for the requests routed to it and not yet finished:
the prompt (once per user request; n > 1 samples share its blocks) plus every token generated
since. A request goes to the replica that holds the longest cached prefix of its prompt, unless
that replica is much busier than the least loaded one; otherwise to the least loaded.

The router cannot see a replica's prefix cache, so it keeps its own picture: the chained hashes
of the full prompt blocks it has sent to each replica, the most recent `max_blocks_per_replica`
of them (a replica's cache evicts the least recently used blocks too). A prefix the replica has
evicted meanwhile costs one prefill there, the same as anywhere else.

Everything here is O(prompt blocks) per request and O(1) per generated token; one lock covers
the request path (the event loop) and the output path (the receive thread).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pagedllm.core.block_hash import hash_block_tokens

# A replica holding a request's prefix is "much busier" once its load exceeds this many times
# the least loaded replica's, plus this many times the prefix's tokens (the prefill a hit saves).
BUSY_FACTOR = 2.0
PREFIX_WEIGHT = 2.0


@dataclass(slots=True)
class RoutedRequest:
    """One core request in flight: where it went and the tokens it holds there."""

    replica: int
    tokens: int


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a request goes, and how much of its prompt the router believes is cached there."""

    replica: int
    cached_blocks: int
    block_hashes: tuple[bytes, ...]


class ReplicaRouter:
    """See the module docstring. `block_size`: the replicas' KV block size (tokens)."""

    def __init__(self, num_replicas: int, block_size: int, max_blocks_per_replica: int = 1 << 16):
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        self.num_replicas = num_replicas
        self.block_size = block_size
        self.max_blocks_per_replica = max_blocks_per_replica
        self.loads = [0] * num_replicas
        self.alive = [True] * num_replicas
        self.num_routed = [0] * num_replicas  # user requests sent to each replica, ever
        self._prefixes: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(num_replicas)]
        self._requests: dict[str, RoutedRequest] = {}
        self._rotation = itertools.cycle(range(num_replicas))
        self._lock = threading.Lock()

    # ---- choosing ----------------------------------------------------------------------------
    def block_hashes(self, prompt_token_ids: list[int], cache_salt: str | None = None) -> tuple[bytes, ...]:
        """Chained hashes of the prompt's full blocks (salted requests only match each other)."""
        parent = hashlib.sha256(b"pagedllm-router" + (cache_salt or "").encode()).digest()
        hashes = []
        size = self.block_size
        for start in range(0, len(prompt_token_ids) - size + 1, size):
            parent = hash_block_tokens(parent, prompt_token_ids[start : start + size])
            hashes.append(parent)
        return tuple(hashes)

    def choose(
        self,
        prompt_token_ids: list[int],
        cache_salt: str | None = None,
        exclude: frozenset[int] = frozenset(),
    ) -> RoutingDecision:
        """The replica for a new user request (not yet recorded: `assign` does that), never one
        in `exclude`. Raises LookupError when no replica is left."""
        # One replica: nothing to choose, so nothing to hash.
        hashes = self.block_hashes(prompt_token_ids, cache_salt) if self.num_replicas > 1 else ()
        with self._lock:
            live = [r for r in range(self.num_replicas) if self.alive[r] and r not in exclude]
            if not live:
                raise LookupError("no engine replica is alive")
            least = self._least_loaded(live)
            best, depth = least, 0
            for replica in live:
                matched = self._matched_blocks(replica, hashes)
                if matched > depth or (matched == depth > 0 and self.loads[replica] < self.loads[best]):
                    best, depth = replica, matched
            if depth and self.loads[best] > (
                BUSY_FACTOR * self.loads[least] + PREFIX_WEIGHT * depth * self.block_size
            ):
                best, depth = least, self._matched_blocks(least, hashes)
            return RoutingDecision(best, depth, hashes)

    def _least_loaded(self, live: list[int]) -> int:
        lowest = min(self.loads[r] for r in live)
        tied = [r for r in live if self.loads[r] == lowest]
        if len(tied) == 1:
            return tied[0]
        # Ties (an idle cluster) rotate, so that equal requests spread instead of piling up.
        for _ in range(self.num_replicas):
            candidate = next(self._rotation)
            if candidate in tied:
                return candidate
        return tied[0]

    def _matched_blocks(self, replica: int, hashes: tuple[bytes, ...]) -> int:
        table = self._prefixes[replica]
        matched = 0
        for block_hash in hashes:
            if block_hash not in table:
                break
            matched += 1
        return matched

    # ---- recording ---------------------------------------------------------------------------
    def assign(self, request_ids: list[str], decision: RoutingDecision, prompt_len: int) -> None:
        """Record a user request's core requests (its n samples) as sent to `decision.replica`."""
        replica = decision.replica
        with self._lock:
            self.num_routed[replica] += 1
            for i, request_id in enumerate(request_ids):
                tokens = prompt_len if i == 0 else 0  # samples share the prompt's blocks
                self._requests[request_id] = RoutedRequest(replica, tokens)
                self.loads[replica] += tokens
            table = self._prefixes[replica]
            for block_hash in decision.block_hashes:
                table[block_hash] = None
                table.move_to_end(block_hash)
            while len(table) > self.max_blocks_per_replica:
                table.popitem(last=False)

    def replica_of(self, request_id: str) -> int | None:
        with self._lock:
            routed = self._requests.get(request_id)
            return None if routed is None else routed.replica

    def add_tokens(self, request_id: str, num_tokens: int) -> None:
        """A request generated `num_tokens` more (unknown ids: finished or aborted already)."""
        with self._lock:
            routed = self._requests.get(request_id)
            if routed is not None:
                routed.tokens += num_tokens
                self.loads[routed.replica] += num_tokens

    def release(self, request_id: str) -> int | None:
        """A request finished, was aborted or refused: its load goes; returns its replica."""
        with self._lock:
            routed = self._requests.pop(request_id, None)
            if routed is None:
                return None
            self.loads[routed.replica] -= routed.tokens
            return routed.replica

    def mark_dead(self, replica: int) -> list[str]:
        """Take a replica out of routing; returns the ids of the requests it was serving."""
        with self._lock:
            self.alive[replica] = False
            lost = [rid for rid, routed in self._requests.items() if routed.replica == replica]
            for request_id in lost:
                del self._requests[request_id]
            self.loads[replica] = 0
            self._prefixes[replica].clear()
            return lost

    def revive(self, replica: int) -> None:
        """A replica (a new one in a dead one's slot) is back in routing, with an empty cache."""
        with self._lock:
            self.alive[replica] = True
            self.loads[replica] = 0

    def num_requests(self, replica: int) -> int:
        """Core requests in flight on `replica` (O(requests): for snapshots, not per step)."""
        with self._lock:
            return sum(1 for routed in self._requests.values() if routed.replica == replica)

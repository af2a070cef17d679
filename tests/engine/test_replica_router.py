"""The data-parallel router's choices: least load, prefix affinity unless much busier, dead
replicas skipped, salts kept apart, loads returned when requests end."""

from __future__ import annotations

import pytest

from pagedllm.engine.replica_router import ReplicaRouter, RoutingDecision

BLOCK = 4


def route(router: ReplicaRouter, request_id: str, prompt: list[int], salt: str | None = None) -> int:
    decision = router.choose(prompt, salt)
    router.assign([request_id], decision, len(prompt))
    return decision.replica


def test_idle_replicas_take_turns_and_load_decides_after():
    router = ReplicaRouter(3, BLOCK)
    first = [route(router, f"r{i}", [100 + i, 1, 2]) for i in range(3)]
    assert sorted(first) == [0, 1, 2]
    # Each holds 3 tokens; a long request makes one busy, so the next two avoid it.
    busy = route(router, "long", list(range(50)))
    others = {route(router, "a", [7, 8]), route(router, "b", [9, 10])}
    assert busy not in others and len(others) == 2


def test_generated_tokens_count_and_finishing_frees_the_load():
    router = ReplicaRouter(2, BLOCK)
    a = route(router, "a", [1, 2, 3])
    router.add_tokens("a", 40)
    assert router.loads[a] == 43
    assert route(router, "b", [5, 6, 7]) != a
    assert router.release("a") == a and router.loads[a] == 0
    assert router.release("a") is None  # twice (finished, then aborted) is harmless
    router.add_tokens("a", 5)  # an output after the abort: ignored
    assert router.loads[a] == 0


def test_a_cached_prefix_wins_unless_that_replica_is_much_busier():
    router = ReplicaRouter(2, BLOCK)
    prefix = list(range(10, 10 + 8 * BLOCK))  # 8 full blocks: 32 tokens
    home = route(router, "first", prefix + [1])
    router.release("first")
    # Idle again: equally loaded, and the prefix is only at home.
    decision = router.choose(prefix + [2, 3])
    assert decision.replica == home and decision.cached_blocks == 8
    # Busier at home, within twice the idle replica's load plus twice the prefix (64 tokens).
    router.assign(["x"], forced(router, [999, 998], home), 60)
    assert router.choose(prefix + [4]).replica == home
    # Past it: the least loaded replica, where nothing is cached.
    router.add_tokens("x", 5)
    decision = router.choose(prefix + [5])
    assert decision.replica == 1 - home and decision.cached_blocks == 0


def test_longest_prefix_decides_between_replicas():
    router = ReplicaRouter(2, BLOCK)
    shared = list(range(20, 20 + 2 * BLOCK))
    longer = shared + list(range(60, 60 + 4 * BLOCK))
    router.assign(["a"], forced(router, shared + [1], 0), 9)
    router.assign(["b"], forced(router, longer, 1), len(longer))
    router.release("a")
    router.release("b")
    decision = router.choose(longer + [3])
    assert decision.replica == 1 and decision.cached_blocks == 6
    assert router.choose(shared + [3]).cached_blocks == 2


def forced(router: ReplicaRouter, prompt: list[int], replica: int) -> RoutingDecision:
    """A decision sending `prompt` to `replica`, whatever `choose` would say."""
    return RoutingDecision(replica, 0, router.block_hashes(prompt))


def test_salted_prompts_only_match_their_own_salt():
    router = ReplicaRouter(2, BLOCK)
    prompt = list(range(30, 30 + 4 * BLOCK))
    route(router, "a", prompt, salt="alice")
    router.release("a")
    assert router.choose(prompt, "alice").cached_blocks == 4
    assert router.choose(prompt, "bob").cached_blocks == 0
    assert router.choose(prompt).cached_blocks == 0


def test_dead_replica_is_skipped_and_its_requests_returned():
    router = ReplicaRouter(2, BLOCK)
    prompt = list(range(4 * BLOCK))
    home = route(router, "a", prompt)
    router.assign(["n0", "n1"], forced(router, [1, 2], home), 2)  # n = 2 samples
    assert sorted(router.mark_dead(home)) == ["a", "n0", "n1"]
    assert router.loads[home] == 0
    # Even the cached prefix does not bring a request back to the dead replica.
    assert all(router.choose(prompt).replica == 1 - home for _ in range(4))
    router.mark_dead(1 - home)
    with pytest.raises(LookupError, match="no engine replica"):
        router.choose(prompt)


def test_prefix_memory_is_bounded():
    router = ReplicaRouter(1, BLOCK, max_blocks_per_replica=8)
    old = list(range(100, 100 + 4 * BLOCK))
    route(router, "old", old)
    for i in range(3):
        route(router, f"new{i}", [1000 * (i + 1) + t for t in range(4 * BLOCK)])
    assert router.choose(old).cached_blocks == 0  # the oldest blocks were forgotten

"""Which decode batch sizes are captured as graphs and which a step replays."""

from __future__ import annotations

from pagedllm.platforms.graph_buckets import bucket_for, capture_sizes


def test_capture_sizes_are_powers_of_two_then_multiples_of_eight_up_to_the_limit():
    assert capture_sizes(1) == [1]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert capture_sizes(128) == [1, 2, 4] + list(range(8, 129, 8))
    assert capture_sizes(4096)[-1] == 512  # larger batches run eagerly


def test_a_step_replays_the_smallest_size_that_holds_it():
    sizes = capture_sizes(20)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 5, 8, 9, 17, 20)] == [1, 2, 4, 8, 8, 16, 20, 20]
    assert bucket_for(0, sizes) is None and bucket_for(21, sizes) is None

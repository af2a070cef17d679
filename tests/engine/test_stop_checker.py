"""StopChecker: stop strings across deltas, truncation, streaming hold-back."""

from __future__ import annotations

from pagedllm.engine.stop_checker import StopChecker


def _feed(checker: StopChecker, deltas: list[str]) -> tuple[str | None, int]:
    for i, delta in enumerate(deltas):
        found = checker.append(delta)
        if found is not None:
            return found, i
    return None, len(deltas)


def test_stop_string_spanning_deltas_truncates_before_it():
    checker = StopChecker(["<END>"])
    assert _feed(checker, ["Hello <", "E", "ND> more"]) == ("<END>", 2)
    assert checker.text() == "Hello "


def test_include_stop_str_keeps_it_and_drops_the_rest():
    checker = StopChecker(["<END>"], include_stop_str_in_output=True)
    assert _feed(checker, ["Hi <EN", "D> tail"]) == ("<END>", 1)
    assert checker.text() == "Hi <END>"
    assert checker.holdback == 0


def test_earliest_match_wins_among_stop_strings():
    checker = StopChecker(["world", "lo w"])
    assert checker.append("hello world") == "lo w"
    assert checker.text() == "hel"


def test_old_text_is_not_searched_again():
    checker = StopChecker(["ab"])
    checker.append("xa")
    # Only matches that end in the new text count; "ab" spans old "a" and new "b".
    assert checker.append("b") == "ab"
    assert checker.text() == "x"


def test_check_stop_false_only_accumulates():
    checker = StopChecker(["x"])
    assert checker.append("axb", check_stop=False) is None
    assert checker.text() == "axb"


def test_holdback_in_deltas_and_flush_at_finish():
    checker = StopChecker(["STOP", "no"])
    assert checker.holdback == 3
    checker.append("abcdef")
    assert checker.take_delta(finished=False) == "abc"
    checker.append("g")
    assert checker.take_delta(finished=False) == "d"
    assert checker.text(finished=False) == "abcd"
    assert checker.take_delta(finished=True) == "efg"
    assert checker.take_delta(finished=True) == ""


def test_held_text_that_becomes_a_stop_string_is_never_sent():
    checker = StopChecker(["STOP"])
    sent = ""
    for delta in ["one ", "S", "T", "O", "P", " two"]:
        if checker.append(delta):
            sent += checker.take_delta(finished=True)
            break
        sent += checker.take_delta(finished=False)
        assert "S" not in sent
    assert sent == "one "


def test_many_small_deltas_then_whole_text():
    checker = StopChecker([])
    for i in range(1000):
        checker.append(str(i % 10))
    assert checker.text() == "".join(str(i % 10) for i in range(1000))
    assert len(checker) == 1000

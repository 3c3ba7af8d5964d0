"""One throttle for log lines, with an injected clock (issue 12)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qanat.telemetry.throttle import Throttle, held_back


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_per_window_then_the_count_of_what_was_held() -> None:
    clock = Clock()
    throttle = Throttle(burst=2, window_s=10.0, clock=clock)
    assert [throttle.allow("a") for _ in range(5)] == [0, 0, None, None, None]
    assert throttle.allow("b") == 0  # keys are independent
    clock.now = 10.0
    assert throttle.allow("a") == 3
    assert throttle.allow("a") == 0
    assert held_back(3) == " (3 more not logged)"
    assert held_back(0) == ""


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.0, 5.0)), max_size=300))
def test_nothing_is_lost_and_lines_are_bounded(events: list[tuple[str, float]]) -> None:
    clock = Clock()
    throttle = Throttle(burst=3, window_s=10.0, clock=clock)
    passed = held_reported = 0
    times: dict[str, list[float]] = {}
    for key, step in events:
        clock.now += step
        held = throttle.allow(key)
        if held is not None:
            passed += 1
            held_reported += held
            times.setdefault(key, []).append(clock.now)
    # Every event is either logged, reported as held back, or still pending.
    assert passed + held_reported + throttle.pending() == len(events)
    # Any 10 s span holds at most two windows' bursts of lines per key.
    for stamps in times.values():
        for i, start in enumerate(stamps):
            assert sum(1 for t in stamps[i:] if t < start + 10.0) <= 6


def test_memory_is_bounded() -> None:
    throttle = Throttle(max_keys=10, clock=Clock())
    for n in range(1000):
        throttle.allow(str(n))
    assert len(throttle._windows) == 10

"""When a second connector is asked for a channel (issue 12, bug 5): pure and bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qanat.gateway.hedge import HedgePolicy, OpenTimes, hedge_after_s

policies = st.builds(
    lambda lo, span, factor: HedgePolicy(min_s=lo, max_s=lo + span, factor=factor),
    st.floats(0.001, 1.0),
    st.floats(0.0, 5.0),
    st.floats(1.0, 20.0),
)
opens = st.floats(0.0, 100.0, allow_nan=False) | st.none()


@given(opens, policies)
def test_the_bound_is_always_within_min_and_max(usual: float | None, policy: HedgePolicy) -> None:
    bound = hedge_after_s(usual, policy)
    assert policy.min_s <= bound <= policy.max_s


@given(st.floats(0.0, 10.0), st.floats(0.0, 10.0), policies)
def test_slower_usual_opens_never_hedge_sooner(a: float, b: float, policy: HedgePolicy) -> None:
    low, high = sorted((a, b))
    assert hedge_after_s(low, policy) <= hedge_after_s(high, policy)


def test_no_history_waits_the_longest_and_a_lan_hedges_fast() -> None:
    policy = HedgePolicy()
    assert hedge_after_s(None, policy) == 1.0
    assert hedge_after_s(0.001, policy) == 0.2  # ~1 ms opens: hedge after the floor
    assert hedge_after_s(0.2, policy) == pytest.approx(0.8)
    assert hedge_after_s(float("inf"), policy) == 1.0


@given(st.lists(st.floats(0.0, 10.0), max_size=200))
def test_open_times_p90_is_one_of_the_last_samples(samples: list[float]) -> None:
    times = OpenTimes(size=64)
    for s in samples:
        times.add(s)
    kept = samples[-64:]
    p90 = times.p90()
    if not kept:
        assert p90 is None
        return
    assert p90 in kept
    assert sum(1 for s in kept if s <= p90) >= 0.9 * len(kept)


def test_bad_samples_are_ignored_and_bad_policies_refused() -> None:
    times = OpenTimes()
    for bad in (-1.0, float("nan"), float("inf")):
        times.add(bad)
    assert len(times) == 0
    with pytest.raises(ValueError, match="min_s <= max_s"):
        HedgePolicy(min_s=2.0, max_s=1.0)

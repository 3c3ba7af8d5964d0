"""Back-off of connectors that open tunnels in a tight loop."""

from __future__ import annotations

from qanat.gateway.flapping import FlapGuard


def test_under_the_limit_nothing_happens() -> None:
    guard = FlapGuard(max_connects=3, window_s=10.0, backoff_s=5.0)
    for t in range(3):
        assert guard.check("k", float(t)).allowed
        assert guard.connected("k", float(t)).allowed
    assert guard.snapshot(3.0) == ()


def test_old_connects_leave_the_window() -> None:
    guard = FlapGuard(max_connects=2, window_s=10.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        assert guard.connected("k", t).allowed


def test_one_too_many_starts_a_backoff_that_doubles() -> None:
    guard = FlapGuard(max_connects=2, window_s=10.0, backoff_s=5.0, backoff_max_s=12.0)
    guard.connected("k", 0.0)
    guard.connected("k", 0.1)
    strike = guard.connected("k", 0.2)
    assert not strike.allowed
    assert strike.retry_after_s == 5.0
    assert strike.strike == 1
    refused = guard.check("k", 1.0)
    assert not refused.allowed
    assert refused.retry_after_header == "5"
    assert guard.check("k", 5.3).allowed
    for t in (5.3, 5.4):
        assert guard.connected("k", t).allowed
    strike = guard.connected("k", 5.5)
    assert strike.retry_after_s == 10.0
    assert strike.strike == 2
    for t in (15.6, 15.7):
        guard.connected("k", t)
    assert guard.connected("k", 15.8).retry_after_s == 12.0  # capped
    (entry,) = guard.snapshot(16.0)
    assert entry.strikes == 3
    assert entry.refused_upgrades == 1


def test_other_keys_are_not_affected() -> None:
    guard = FlapGuard(max_connects=1, window_s=10.0)
    guard.connected("flapper", 0.0)
    guard.connected("flapper", 0.1)
    assert not guard.check("flapper", 0.2).allowed
    assert guard.check("steady", 0.2).allowed
    assert guard.connected("steady", 0.2).allowed


def test_strikes_are_forgotten_after_a_quiet_spell() -> None:
    guard = FlapGuard(max_connects=1, window_s=10.0, backoff_s=5.0, backoff_max_s=20.0)
    guard.connected("k", 0.0)
    assert guard.connected("k", 0.1).strike == 1
    guard.connected("k", 100.0)  # back-off ended at 5.1; quiet for longer than 20 s
    assert guard.connected("k", 100.1).strike == 1


def test_memory_is_bounded() -> None:
    guard = FlapGuard(max_keys=100)
    for i in range(1000):
        guard.connected(f"k{i}", 0.0)
    assert len(guard._records) == 100

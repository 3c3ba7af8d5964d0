"""Pure rules of the hardening pass: stage overlap, token limiter, proxies, pressure."""

from __future__ import annotations

import pytest

from qanat import isolation
from qanat.gateway.pressure import ConnectionGate, PressureLimits
from qanat.gateway.tokenlimit import RefusalTally, TokenLimiter, TokenLimits
from qanat.isolation import Binding
from qanat.wire.forwarded import client_address, parse_networks


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("0.0.0.0", "10.1.2.3", True),
        ("::", "10.1.2.3", True),  # Linux dual stack
        ("0.0.0.0", "::1", False),
        ("::1", "::", True),
        ("fd00::1", "fd00::2", False),
    ],
)
def test_hosts_overlap(a: str, b: str, expected: bool) -> None:
    assert isolation.hosts_overlap(a, b) is expected
    assert isolation.hosts_overlap(b, a) is expected


def test_ranges_and_owner() -> None:
    a = Binding("acme/dev", "127.0.0.2", 8000, 8999)
    b = Binding("evil/dev", "127.0.0.2", 8999, 9999)
    c = Binding("evil/far", "127.0.0.2", 9000, 9999)
    assert isolation.overlaps(a, b)
    assert not isolation.overlaps(a, c)
    assert isolation.first_overlap(b, [a, b, c]) == a
    assert isolation.owner([a, b], "127.0.0.2", 8999) == a
    assert isolation.owner([b, a], "127.0.0.2", 8999) == b  # listed first wins
    assert isolation.contested([a, b], b, [9500, 8999]) == (8999, a)
    assert isolation.contested([a, b], a, [8999]) is None


def test_free_address_skips_used_and_wildcards() -> None:
    assert isolation.free_address("127.0.0.0/8", []) == "127.0.0.1"
    assert isolation.free_address("127.0.0.0/8", ["127.0.0.1", "127.0.0.2"]) == "127.0.0.3"
    assert isolation.free_address("10.0.0.5/32", []) == "10.0.0.5"
    assert isolation.free_address("10.0.0.5/32", ["10.0.0.5"]) is None
    assert isolation.free_address("10.0.0.0/24", ["0.0.0.0"]) is None


def test_a_valid_token_is_never_refused_and_failures_are_keyed() -> None:
    limiter = TokenLimiter(TokenLimits(burst=3, per_minute=60.0, global_burst=100))
    now = 0.0
    assert [limiter.refuse_failure("10.0.0.9", "sg_a", now) for _ in range(4)] == [
        False,
        False,
        False,
        True,
    ]
    # Another address from the same source, or the same address from
    # another source, has its own bucket.
    assert limiter.refuse_failure("10.0.0.9", "sg_b", now) is False
    assert limiter.refuse_failure("10.0.0.8", "sg_a", now) is False
    # Refills over time.
    assert limiter.refuse_failure("10.0.0.9", "sg_a", now + 1.5) is False


def test_the_global_bucket_slows_a_distributed_guesser() -> None:
    limiter = TokenLimiter(TokenLimits(burst=100, global_burst=5, global_per_minute=1.0))
    answers = [limiter.refuse_failure(f"10.0.0.{i}", "sg_a", 0.0) for i in range(8)]
    assert answers == [False] * 5 + [True] * 3


def test_refusal_tally_is_one_line_per_interval() -> None:
    tally = RefusalTally()
    assert tally.add("10.0.0.9", "bad") is True
    assert tally.add("10.0.0.9", "rate_limited") is True  # first of its reason
    for _ in range(98):
        assert tally.add("10.0.0.9", "rate_limited") is False
    line = tally.summary(10.0)
    assert line is not None
    assert "refused 100 tunnel attempts in the last 10s" in line
    assert "10.0.0.9 (100)" in line
    assert tally.summary(10.0) is None


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("10.9.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("10.9.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # client-written left part
        ("10.9.0.1", ["203.0.113.7, 10.9.0.2"], "203.0.113.7"),  # two trusted hops
        ("192.0.2.1", ["203.0.113.7"], "192.0.2.1"),  # untrusted peer: header ignored
        ("10.9.0.1", ["not-an-ip"], "10.9.0.1"),
        ("10.9.0.1", [], "10.9.0.1"),
        ("10.9.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(peer, xff, parse_networks(["10.9.0.0/16"])) == expected
    assert client_address(peer, xff, ()) == peer


def test_connection_gate_caps_per_source_and_in_all() -> None:
    gate = ConnectionGate(PressureLimits(per_source=2, total=3))
    assert [gate.admit("a") for _ in range(3)] == [True, True, False]
    assert gate.admit("b") is True
    assert gate.admit("c") is False  # total reached
    gate.release("a")
    assert gate.admit("c") is True
    line = gate.summary()
    assert line is not None
    assert "closed 2 unproven connections" in line
    assert gate.summary() is None

"""The pool's order, health tiers and balance, with the clock in our hands."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from qanat.gateway.balancer import Health, Member, Pool, PoolPolicy, Strategy


@dataclass
class FakeTunnel:
    id: int
    draining: bool = False
    missed_pings: int = 0


def pool_of(n: int, **policy: object) -> tuple[Pool, list[FakeTunnel]]:
    pool = Pool(PoolPolicy(**policy))  # type: ignore[arg-type]
    tunnels = [FakeTunnel(i + 1) for i in range(n)]
    for t in tunnels:
        pool.add(Member(t, "127.0.0.1:80", b"127.0.0.1:80"))
    return pool, tunnels


def first(pool: Pool, now: float = 0.0) -> int:
    return pool.order(now)[0].tunnel.id


def serve_one(pool: Pool, now: float = 0.0) -> Member:
    """One app connection: the first member opens and closes again."""
    member = pool.order(now)[0]
    token = pool.begin(member, now)
    pool.succeeded(member, token, now)
    Pool.closed(member)
    return member


def test_round_robin_alternates_exactly() -> None:
    pool, _ = pool_of(2)
    counts = Counter(serve_one(pool).tunnel.id for _ in range(1000))
    assert counts == {1: 500, 2: 500}


def test_order_lists_every_member_once() -> None:
    pool, _ = pool_of(3)
    for _ in range(5):
        ids = [m.tunnel.id for m in pool.order(0.0)]
        assert sorted(ids) == [1, 2, 3]


def test_least_connections_prefers_the_idle_member() -> None:
    pool, _ = pool_of(2, strategy=Strategy.LEAST_CONNECTIONS)
    busy = pool.members[0]
    for _ in range(5):  # five long-lived connections on tunnel 1
        pool.succeeded(busy, pool.begin(busy, 0.0), 0.0)
    assert [first(pool) for _ in range(4)] == [2, 2, 2, 2]


def test_least_connections_ties_rotate() -> None:
    pool, _ = pool_of(2, strategy=Strategy.LEAST_CONNECTIONS)
    counts = Counter(serve_one(pool).tunnel.id for _ in range(1000))
    assert counts == {1: 500, 2: 500}


def test_least_connections_counts_pending_opens() -> None:
    pool, _ = pool_of(2, strategy=Strategy.LEAST_CONNECTIONS)
    m1 = pool.order(0.0)[0]
    pool.begin(m1, 0.0)  # still opening
    assert pool.order(0.0)[0] is not m1


def test_failures_in_a_row_start_a_cooldown() -> None:
    pool, _ = pool_of(2, failure_threshold=3, cooldown_s=5.0)
    bad = pool.members[0]
    assert not pool.failed(bad, pool.begin(bad, 0.0), 0.0, "refused")
    assert not pool.failed(bad, pool.begin(bad, 0.0), 0.0, "refused")
    assert pool.failed(bad, pool.begin(bad, 0.0), 1.0, "refused")  # third: starts it
    assert bad.health(1.0, pool.policy) is Health.COOLING
    # While cooling, the bad member is only a fallback, after the healthy one.
    for _ in range(4):
        assert [m.tunnel.id for m in pool.order(2.0)] == [2, 1]


def test_a_success_resets_the_count() -> None:
    pool, _ = pool_of(1, failure_threshold=3)
    m = pool.members[0]
    pool.failed(m, pool.begin(m, 0.0), 0.0, "x")
    pool.failed(m, pool.begin(m, 0.0), 0.0, "x")
    pool.succeeded(m, pool.begin(m, 0.0), 0.0)
    assert not pool.failed(m, pool.begin(m, 0.0), 0.0, "x")
    assert m.cooling_until == 0.0


def test_after_the_cooldown_one_connection_probes() -> None:
    pool, _ = pool_of(2, failure_threshold=1, cooldown_s=5.0)
    bad = pool.members[0]
    pool.failed(bad, pool.begin(bad, 0.0), 0.0, "refused")
    assert first(pool, 4.9) == 2
    probe_order = pool.order(5.0)
    assert probe_order[0] is bad  # due: tried first, once
    token = pool.begin(bad, 5.0)
    assert bad.probing
    assert [m.tunnel.id for m in pool.order(5.0)] == [2, 1]  # no second probe meanwhile
    assert not pool.failed(bad, token, 5.1, "refused")  # probe failed: cool again
    assert first(pool, 10.0) == 2
    assert first(pool, 10.1) == 1  # next probe due at 10.1
    assert pool.succeeded(bad, pool.begin(bad, 10.1), 10.1)  # probe succeeded: back
    assert bad.health(10.1, pool.policy) is Health.HEALTHY


def test_the_stall_threshold_follows_the_usual_open_time() -> None:
    pool, _ = pool_of(1, stall_s=1.0, stall_min_s=0.1)
    m = pool.members[0]
    assert m.stall_after_s(pool.policy) == 1.0  # nothing known yet
    for _ in range(50):  # opens take 1 ms
        pool.succeeded(m, pool.begin(m, 0.0), 0.001)
        Pool.closed(m)
    assert m.stall_after_s(pool.policy) == 0.1  # floor
    for i in range(50):  # a slow network: opens take 300 ms
        pool.succeeded(m, pool.begin(m, float(i)), i + 0.3)
    assert m.stall_after_s(pool.policy) == 1.0  # cap
    pool.begin(m, 100.0)
    assert m.health(100.5, pool.policy) is Health.HEALTHY
    assert m.health(101.5, pool.policy) is Health.STALLED


def test_stalled_and_suspect_members_go_behind_healthy_ones() -> None:
    pool, tunnels = pool_of(3, stall_s=1.0)
    stalled = pool.members[0]
    pool.begin(stalled, 0.0)  # an open that never comes back
    tunnels[1].missed_pings = 1
    assert stalled.health(0.5, pool.policy) is Health.HEALTHY
    assert stalled.health(1.5, pool.policy) is Health.STALLED
    for _ in range(3):
        assert pool.order(1.5)[0].tunnel.id == 3


def test_draining_members_come_last_and_are_still_listed() -> None:
    pool, tunnels = pool_of(3, failure_threshold=1)
    tunnels[0].draining = True
    cooling = pool.members[1]
    pool.failed(cooling, pool.begin(cooling, 0.0), 0.0, "x")
    assert [m.tunnel.id for m in pool.order(1.0)] == [3, 2, 1]
    tunnels[2].draining = True
    assert [m.tunnel.id for m in pool.order(1.0)][-2:] in ([1, 3], [3, 1])


def test_abandoned_attempts_leave_no_verdict() -> None:
    pool, _ = pool_of(1, failure_threshold=1)
    m = pool.members[0]
    pool.abandoned(m, pool.begin(m, 0.0))
    assert not m.pending
    assert m.failures_in_row == 0
    assert m.health(9.0, pool.policy) is Health.HEALTHY


def test_remove() -> None:
    pool, tunnels = pool_of(2)
    assert pool.remove(tunnels[0]) is not None
    assert pool.remove(tunnels[0]) is None
    assert [m.tunnel.id for m in pool.order(0.0)] == [2]


events = st.lists(
    st.tuples(
        st.sampled_from(["ok", "fail", "abandon", "close", "drain", "miss", "heal"]),
        st.integers(0, 3),
        st.floats(0.0, 3.0),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(events, st.sampled_from(list(Strategy)))
def test_order_is_always_a_permutation(
    script: list[tuple[str, int, float]], strategy: Strategy
) -> None:
    pool, tunnels = pool_of(4, strategy=strategy, failure_threshold=2, cooldown_s=2.0)
    now = 0.0
    for action, index, step in script:
        now += step
        order = pool.order(now)
        assert sorted(m.tunnel.id for m in order) == [1, 2, 3, 4]
        member = pool.members[index]
        if action in ("ok", "fail", "abandon"):
            token = pool.begin(member, now)
            if action == "ok":
                pool.succeeded(member, token, now)
            elif action == "fail":
                pool.failed(member, token, now, "x")
            else:
                pool.abandoned(member, token)
        elif action == "close" and member.open:
            Pool.closed(member)
        elif action == "drain":
            tunnels[index].draining = True
        elif action == "miss":
            tunnels[index].missed_pings += 1
        else:
            tunnels[index].missed_pings = 0
        assert member.open >= 0
        assert not member.pending
        # Healthy members always come before unwell ones.
        healths = [m.health(now, pool.policy) for m in pool.order(now)]
        if Health.HEALTHY in healths:
            last_healthy = max(i for i, h in enumerate(healths) if h is Health.HEALTHY)
            assert all(
                h is Health.HEALTHY or (h is Health.COOLING and i == 0)
                for i, h in enumerate(healths[: last_healthy + 1])
            )


@dataclass
class FakeNode(FakeTunnel):
    """Another gateway node in the pool (qanat.cluster's RemoteTunnel)."""

    remote: bool = True


def test_local_connectors_come_before_other_nodes_and_nodes_before_unwell_ones() -> None:
    pool = Pool(PoolPolicy())
    local = [FakeTunnel(1), FakeTunnel(2)]
    nodes = [FakeNode(-1), FakeNode(-2)]
    for t in (nodes[0], local[0], nodes[1], local[1]):
        pool.add(Member(t, "127.0.0.1:80", b"127.0.0.1:80"))
    firsts = Counter(serve_one(pool).tunnel.id for _ in range(100))
    assert firsts == {1: 50, 2: 50}  # local ones share the load, nodes only behind
    assert {m.tunnel.id for m in pool.order(0.0)[2:]} == {-1, -2}
    local[0].draining = True
    local[1].missed_pings = 1
    order = [m.tunnel.id for m in pool.order(0.0)]
    assert set(order[:2]) == {-1, -2}  # healthy nodes before an unwell local connector
    assert order[2:] == [2, 1]  # then suspect, then draining

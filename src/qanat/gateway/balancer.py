"""Which tunnel carries the next app connection: pools, health and balance.

Every ``secure-gateway:<port>`` has a :class:`Pool` with one :class:`Member`
per tunnel serving the port. For each new app connection :meth:`Pool.order`
lists the members in the order to try them; the app connection takes the
first one whose connector opens the channel. The list has three tiers::

    preferred   healthy members, in balance order: round robin, or fewest
                open connections first (ties in round-robin order)
    fallback    members that look unwell: cooling down after
                ``failure_threshold`` failed opens in a row, or with an open
                pending for too long (see below), or whose tunnel missed a
                keepalive; tried only when every preferred member failed
    last        draining tunnels (their connector is shutting down and asked
                for no new connections); used only when nothing else works

A member that cools down comes back by itself: once ``cooldown_s`` has
passed, the next app connection tries it first (one probe at a time); the
connection is retried elsewhere if the probe fails, so a connector that
refuses everything costs one app connection one retry per cool-down instead
of costing every app connection a retry.

"Too long" adapts to the member: ten times its usual open time (a moving
average of successful opens), at least ``stall_min_s`` and at most
``stall_s``. A connector that stops answering (frozen, network silently
dropping) is thus skipped after ~0.1 s on a LAN instead of after a fixed
second, and fewer app connections wait for their open timeout meanwhile.

Health is per member, that is per (tunnel, port): a connector whose target
for port 8081 is down keeps serving port 8082.

Everything here is bookkeeping on counters and timestamps: no I/O, no
``await``, the clock passed in by the caller, so it is tested directly.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Protocol


class Strategy(enum.Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"


class PoolTunnel(Protocol):
    """What the pool reads from a tunnel."""

    @property
    def id(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    @property
    def missed_pings(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PoolPolicy:
    """Balance and health rules (from GatewaySettings)."""

    strategy: Strategy = Strategy.ROUND_ROBIN
    failure_threshold: int = 3
    cooldown_s: float = 5.0
    stall_s: float = 1.0
    stall_min_s: float = 0.1


class Health(enum.Enum):
    HEALTHY = "healthy"
    STALLED = "stalled"  # an open pending for longer than stall_s
    SUSPECT = "suspect"  # the tunnel missed a keepalive
    COOLING = "cooling"  # too many failed opens in a row
    DRAINING = "draining"


_tokens = itertools.count(1)


@dataclass(eq=False)
class Member:
    """One tunnel in one port's pool.

    Attributes:
        tunnel: the tunnel.
        target: ``host:port`` the connector dials for this port.
        extra: the channel's extra data (the target, ``/udp`` for UDP).
        open: app connections open through this member now.
        total / failed: channel opens that succeeded / failed, ever.
        failures_in_row: failed opens since the last success.
        cooling_until: monotonic time the cool-down ends (0: not cooling).
        probing: a probe after a cool-down is in flight.
        last_error: the most recent failure, for logs and status.
    """

    tunnel: PoolTunnel
    target: str
    extra: bytes
    open: int = 0
    total: int = 0
    failed: int = 0
    failures_in_row: int = 0
    cooling_until: float = 0.0
    probing: bool = False
    last_error: str = ""
    open_avg_s: float | None = None  # moving average of successful open times
    # open attempt token -> start time; insertion order is start order.
    pending: dict[int, float] = field(default_factory=dict)

    def oldest_pending_s(self, now: float) -> float:
        """Age of the oldest open still waiting for the connector (0 if none)."""
        for started in self.pending.values():
            return now - started
        return 0.0

    def health(self, now: float, policy: PoolPolicy) -> Health:
        if self.tunnel.draining:
            return Health.DRAINING
        if self.cooling_until:
            return Health.COOLING
        if self.tunnel.missed_pings:
            return Health.SUSPECT
        if self.oldest_pending_s(now) > self.stall_after_s(policy):
            return Health.STALLED
        return Health.HEALTHY

    def stall_after_s(self, policy: PoolPolicy) -> float:
        """How long an open may be pending before this member counts as stalled."""
        if self.open_avg_s is None:
            return policy.stall_s
        return min(policy.stall_s, max(policy.stall_min_s, 10 * self.open_avg_s))


def _is_remote(member: Member) -> bool:
    return bool(getattr(member.tunnel, "remote", False))


class Pool:
    """The members of one port and the order to try them in."""

    def __init__(self, policy: PoolPolicy) -> None:
        self.policy = policy
        self.members: list[Member] = []
        self._turn = 0

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Member) -> None:
        self.members.append(member)

    def find(self, tunnel: PoolTunnel) -> Member | None:
        for member in self.members:
            if member.tunnel is tunnel:
                return member
        return None

    def remove(self, tunnel: PoolTunnel) -> Member | None:
        member = self.find(tunnel)
        if member is not None:
            self.members.remove(member)
        return member

    def usable(self, now: float) -> int:
        """How many members would be tried first (healthy or due a probe)."""
        return sum(
            1
            for m in self.members
            if m.health(now, self.policy) is Health.HEALTHY or self._due_probe(m, now)
        )

    def _due_probe(self, member: Member, now: float) -> bool:
        return (
            bool(member.cooling_until)
            and now >= member.cooling_until
            and not member.probing
            and not member.tunnel.draining
        )

    def order(self, now: float) -> list[Member]:
        """The members to try for one new app connection, best first."""
        probe: Member | None = None
        preferred: list[Member] = []
        unwell: list[Member] = []
        cooling: list[Member] = []
        draining: list[Member] = []
        policy = self.policy
        for member in self.members:
            health = member.health(now, policy)
            if health is Health.HEALTHY:
                preferred.append(member)
            elif health is Health.COOLING:
                if probe is None and self._due_probe(member, now):
                    probe = member
                else:
                    cooling.append(member)
            elif health is Health.DRAINING:
                draining.append(member)
            else:
                unwell.append(member)
        if preferred:
            start = self._turn % len(preferred)
            self._turn = start + 1
            preferred = preferred[start:] + preferred[:start]
            if policy.strategy is Strategy.LEAST_CONNECTIONS:
                # Stable sort: ties keep the round-robin order.
                preferred.sort(key=lambda m: m.open + len(m.pending))
            # Local first: this node's own connectors before other nodes'
            # (qanat.cluster); stable, so each group keeps its balance order.
            preferred.sort(key=_is_remote)
        head = [probe] if probe is not None else []
        return head + preferred + unwell + cooling + draining

    # -- outcome of one attempt ----------------------------------------------

    def begin(self, member: Member, now: float) -> int:
        """An open is being tried on ``member``; returns its token."""
        token = next(_tokens)
        member.pending[token] = now
        if self._due_probe(member, now):
            member.probing = True
        return token

    def succeeded(self, member: Member, token: int, now: float) -> bool:
        """The channel opened. Returns True when this ends a cool-down."""
        self.carrying(member, token, now)
        return self.healthy(member)

    @staticmethod
    def carrying(member: Member, token: int, now: float) -> None:
        """The channel opened and carries an app connection; whether the
        connector reached the endpoint is not known yet (an early-open
        confirmation): :meth:`healthy` or :meth:`failed` follows."""
        started = member.pending.pop(token, None)
        if started is not None:
            took = max(0.0, now - started)
            avg = member.open_avg_s
            member.open_avg_s = took if avg is None else avg + (took - avg) / 8
        member.total += 1
        member.open += 1

    @staticmethod
    def healthy(member: Member) -> bool:
        """The connector reached the endpoint. True when this ends a cool-down."""
        member.failures_in_row = 0
        member.probing = False
        if member.cooling_until:
            member.cooling_until = 0.0
            return True
        return False

    def failed(self, member: Member, token: int, now: float, reason: str) -> bool:
        """The connector refused or did not answer in time.

        Returns True when this failure starts a cool-down (to log once).
        """
        member.pending.pop(token, None)
        member.failed += 1
        member.failures_in_row += 1
        member.last_error = reason
        member.probing = False
        if member.cooling_until:
            member.cooling_until = now + self.policy.cooldown_s
            return False
        if member.failures_in_row >= self.policy.failure_threshold:
            member.cooling_until = now + self.policy.cooldown_s
            return True
        return False

    def abandoned(self, member: Member, token: int) -> None:
        """The attempt ended without a verdict (the tunnel is closing, the app left)."""
        member.pending.pop(token, None)
        member.probing = False

    @staticmethod
    def closed(member: Member) -> None:
        """An app connection carried by ``member`` ended."""
        member.open -= 1

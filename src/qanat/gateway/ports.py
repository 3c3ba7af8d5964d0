"""The stage ports: one listener per declared port, a pool of tunnels behind it.

``secure-gateway:<port>`` of a stage is a *port* (see the glossary in
docs/architecture.md; the *endpoint* is the private target behind it): a TCP
listener (:class:`TcpPort`) or a UDP socket (:class:`~qanat.gateway.udp.UdpPort`)
on the stage's bind address, plus the :class:`~qanat.gateway.balancer.Pool`
of tunnels that serve that port (several connectors may declare the same
port; by default they must agree on the target). Both kinds are bound,
joined, left and closed by one path, :class:`PortTable`: a second connector
declaring a port whose listener is being created right now waits for it and
joins, for TCP and UDP alike.

Every TCP app connection accepted becomes one ``chisel`` channel on one
tunnel of the pool; :mod:`qanat.gateway.balancer` decides the order in which
tunnels are tried, and an app connection whose channel cannot be opened on
one tunnel (refused, no answer within the open timeout, tunnel closing) is
tried on the next before it is given up. When the first tunnel has not
answered within a bound learned from recent opens (:mod:`qanat.gateway.hedge`),
a second channel is opened on the next tunnel at the same time and the first
to open wins; the other is closed cleanly when it opens. Only when every
tunnel failed is the app connection closed, and the log line names each
tunnel's reason.

The listener exists while at least one tunnel serves the port (draining and
cooling tunnels included: they are still tried as a last resort).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

from qanat.errors import ChannelOpenFailed
from qanat.gateway.allowlist import Allowlist
from qanat.gateway.balancer import Health, Member, Pool, PoolPolicy, Strategy
from qanat.gateway.bindcheck import unbindable_text
from qanat.gateway.contested import contested_port
from qanat.gateway.context import GatewayContext
from qanat.gateway.failures import RecentFailures
from qanat.gateway.hedge import OpenTimes, hedge_after_s
from qanat.gateway.status import MemberStatus, PortStatus, Proto, UdpStatus
from qanat.logs import ContextLogger
from qanat.net import tcpclose
from qanat.net.splice import Splice
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.stages import StageConfig
    from qanat.gateway.tunnel import Tunnel

_log = logging.getLogger("qanat.gateway.ports")

#: What an app may send before its channel is open, held by the gateway;
#: past this, reading the app pauses until the channel opens.
EARLY_BYTES = 64 * 1024

#: Listeners created between two yields to the event loop while binding the
#: ports of one connector (binding 1,000 ports takes ~0.1 s in total).
BIND_BATCH = 32

PortKey = tuple[str, int, Proto]


def pool_policy(ctx: GatewayContext) -> PoolPolicy:
    s = ctx.settings
    return PoolPolicy(
        strategy=Strategy(s.balance),
        failure_threshold=max(1, s.failure_threshold),
        cooldown_s=s.cooldown_s,
        stall_s=s.channel_stall_s,
    )


class GatewayPort:
    """What TCP and UDP ports share: identity, allowlist, pool, counters."""

    proto: Proto = "tcp"

    def __init__(self, ctx: GatewayContext, stage: StageConfig, remote: Remote) -> None:
        self.ctx = ctx
        self.stage_key = stage.key
        self.bind_host = stage.bind_host
        self.port = int(remote.local_port)
        # The target of the first connector; members carry their own.
        self.target = remote.target
        self.extra = remote.channel_extra
        self.allowlist = Allowlist.parse(stage.allow_cidrs)
        self.pool = Pool(pool_policy(ctx))
        self.refused_sources = 0
        self.recent_failures = RecentFailures()  # for the status page
        shown: object = self.port if self.proto == "tcp" else f"{self.port}/udp"
        self.log = ContextLogger(_log, stage=stage.key, port=shown)

    @property
    def key(self) -> PortKey:
        return (self.bind_host, self.port, self.proto)

    @property
    def name(self) -> str:
        suffix = "" if self.proto == "tcp" else "/udp"
        return f"secure-gateway:{self.port}{suffix}"

    @property
    def tunnels(self) -> list[Tunnel]:
        """The tunnels of the pool, in the order they joined."""
        return [cast("Tunnel", m.tunnel) for m in self.pool.members]

    def allows(self, address: str) -> bool:
        return self.allowlist.allows(address)

    async def listen(self) -> None:
        """Raises: OSError: the port cannot be bound."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def remove_tunnel(self, tunnel: Tunnel) -> None:
        self.pool.remove(tunnel)

    def refused(self, source: str) -> None:
        """Count and (boundedly) log an app source outside the stage allowlist."""
        self.refused_sources += 1
        self.recent_failures.add("allowlist", source, "source not in the stage allowlist")
        self.ctx.refusals.refused(
            self.log,
            f"{self.stage_key}:{self.name.rsplit(':', 1)[1]}",
            source,
            self.refused_sources,
        )

    def _members(self, now: float) -> tuple[MemberStatus, ...]:
        policy = self.pool.policy
        return tuple(
            MemberStatus(
                tunnel=m.tunnel.id,
                connector=cast("Tunnel", m.tunnel).identity,
                target=m.target,
                health=m.health(now, policy).value,
                open_connections=m.open,
                connections_total=m.total,
                opens_failed=m.failed,
                failures_in_row=m.failures_in_row,
                cooling_for_s=round(max(0.0, m.cooling_until - now), 3) if m.cooling_until else 0.0,
                last_error=m.last_error,
            )
            for m in self.pool.members
        )

    def _status(self, udp: UdpStatus | None = None, **counts: int) -> PortStatus:
        suffix = "" if self.proto == "tcp" else "/udp"
        return PortStatus(
            endpoint=self.name,
            proto=self.proto,
            port=self.port,
            bind=f"{self.bind_host}:{self.port}{suffix}",
            target=f"{self.target}{suffix}",
            tunnels=tuple(m.tunnel.id for m in self.pool.members),
            pool=self._members(time.monotonic()),
            open_connections=counts.get("open_connections", 0),
            connections_total=counts.get("connections_total", 0),
            connections_failed=counts.get("connections_failed", 0),
            connections_retried=counts.get("connections_retried", 0),
            bytes_total=counts.get("bytes_total", 0),
            refused_sources=self.refused_sources,
            recent_failures=self.recent_failures.snapshot(),
            udp=udp,
        )

    def snapshot(self) -> PortStatus:
        return self._status()


class TcpPort(GatewayPort):
    """One TCP ``secure-gateway:<port>`` of one stage."""

    proto: Proto = "tcp"

    def __init__(self, ctx: GatewayContext, stage: StageConfig, remote: Remote) -> None:
        super().__init__(ctx, stage, remote)
        self.server: asyncio.Server | None = None
        self.open_connections = 0
        self.connections_total = 0
        self.connections_failed = 0
        self.connections_retried = 0
        self.bytes_total = 0  # both directions, of finished connections
        self.open_times = OpenTimes()
        self.loop: asyncio.AbstractEventLoop | None = None  # set by listen()

    async def listen(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: AppConnection(self),
            self.bind_host,
            self.port,
            reuse_address=True,
            backlog=1024,
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def candidates(self) -> list[Tunnel]:
        """The tunnels in the order to try for the next connection."""
        return [cast("Tunnel", m.tunnel) for m in self.pool.order(time.monotonic())]

    def snapshot(self) -> PortStatus:
        return self._status(
            open_connections=self.open_connections,
            connections_total=self.connections_total,
            connections_failed=self.connections_failed,
            connections_retried=self.connections_retried,
            bytes_total=self.bytes_total,
        )


class _Attempt:
    """One channel open for one app connection on one member.

    A local tunnel opens by callback (:meth:`qanat.net.ssh.SshTunnel.begin_open`):
    the request is written at once and the outcome reaches
    :meth:`AppConnection._settled` inside the read that brought it, so the
    app's first bytes leave with that read's replies. Another node's link
    (qanat.cluster) only has the coroutine ``open_channel``; it runs as a
    task whose end reports the same way.
    """

    __slots__ = (
        "conn",
        "handle",
        "hedge",
        "loop",
        "member",
        "splice",
        "started",
        "timer",
        "token",
        "tunnel",
    )

    def __init__(
        self, conn: AppConnection, member: Member, now: float, hedge: bool = False
    ) -> None:
        ep = conn.endpoint
        self.conn = conn
        self.hedge = hedge
        self.member = member
        self.tunnel = cast("Tunnel", member.tunnel)
        self.token = ep.pool.begin(member, now)
        self.started = now
        # A fresh splice per attempt: an abandoned attempt's channel may
        # still open later, and must not touch this app connection.
        self.loop = conn.loop
        self.splice = Splice(on_done=conn._splice_done, loop=self.loop)
        self.handle: Any = None
        self.timer: asyncio.TimerHandle | None = None

    def begin(self, timeout_s: float) -> None:
        ssh = self.tunnel.ssh
        chan_end = self.splice.chan_end
        begin_open = getattr(ssh, "begin_open", None)
        if begin_open is None:
            task = asyncio.ensure_future(
                ssh.open_channel(self.member.extra, lambda: chan_end, timeout_s=timeout_s)
            )
            task.add_done_callback(self._task_done)
            self.handle = task
            return
        try:
            self.handle = begin_open(self.member.extra, lambda: chan_end, self._result)
        except ChannelOpenFailed as exc:
            # Refused before anything was sent: reported from the loop, as
            # any other outcome, so the caller's state is settled first.
            self.loop.call_soon(self._result, None, exc)
            return
        self.timer = self.loop.call_later(timeout_s, self._timed_out)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._result(None, TimeoutError())
        else:
            exc = task.exception()
            self._result(None if exc is not None else task.result(), exc)

    def _timed_out(self) -> None:
        self.timer = None
        if self.handle is not None:
            self.handle.abandon()
        self._result(None, TimeoutError())

    def _result(self, session: Any, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn._settled(self, exc)


class RelayReply(Protocol):
    """How a connection relayed from another node is answered (qanat.cluster.link)."""

    def opened(self, transport: asyncio.Transport) -> None: ...

    def failed(self, transport: asyncio.Transport, reason: str) -> None: ...


def is_remote(member: Member) -> bool:
    """Whether ``member`` is another gateway node (qanat.cluster), not a local tunnel."""
    return bool(getattr(member.tunnel, "remote", False))


class AppConnection(asyncio.Protocol):
    """An app connection on an endpoint, until its channel is open.

    Callbacks only, no task: the first channel open is written from
    ``connection_made``; each attempt's outcome arrives in :meth:`_settled`;
    a hedge is a timer. Every member is tried at most once, so the attempts
    are bounded by the pool size and each by the open timeout; at most two
    run at once (the second one a hedge).

    What the app sends before a connector has accepted the channel is kept
    (up to :data:`EARLY_BYTES`, then reading pauses) and goes out as soon as
    the channel is open, with the read that brought the confirmation.

    Cluster hook: with ``relay`` the connection came from another gateway
    node over the node link (the app's source was checked there); only
    this node's own tunnels are tried, and the outcome is answered through
    ``relay`` before any byte flows.
    """

    def __init__(self, endpoint: TcpPort, relay: RelayReply | None = None) -> None:
        self.endpoint = endpoint
        self.relay = relay
        self.loop = endpoint.loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.early: list[bytes] = []
        self.early_bytes = 0
        self.eof = False
        # Opening state (see _next, _settled, _hedge).
        self.finished = False  # won, failed or given up: open_connections is settled
        self.started = 0.0
        self.queue: list[Member] = []
        self.used: list[Member] = []  # members tried, in order
        self.running: list[_Attempt] = []
        self.reasons: list[str] = []
        self.tried = 0
        self.hedged = False
        self.hedge_ok = True  # until the next candidate turned out not to be healthy
        self.hedge_timer: asyncio.TimerHandle | None = None
        # Early open: bounds the wait for the connector's verdict (_await_verdict).
        self.verdict_timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        ep = self.endpoint
        # uvloop's transports do not derive from asyncio.Transport: no isinstance.
        self.transport = transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername") or ("?", 0)
        if self.relay is None and not ep.allows(str(peer[0])):
            # Closed at once (RST: the app can tell this from a failed
            # channel), counted, logged within the throttle's bound.
            ep.refused(str(peer[0]))
            tcpclose.reset(transport)
            return
        ep.open_connections += 1
        ep.connections_total += 1
        self.started = time.perf_counter()
        relay = self.relay
        self.queue = [
            m
            for m in ep.pool.order(time.monotonic())
            if cast("Tunnel", m.tunnel).serving and (relay is None or not is_remote(m))
        ]
        self._next()

    # -- trying members ------------------------------------------------------------

    def _next(self) -> None:
        """Try the next serving member; fail the connection when none is left."""
        ep = self.endpoint
        while self.queue:
            member = self.queue.pop(0)
            if not cast("Tunnel", member.tunnel).serving:
                continue
            if self.tried:
                ep.connections_retried += 1
            self.tried += 1
            self._start(member, hedge=False)
            self._arm_hedge()
            return
        if not self.running:
            self._fail()

    def _start(self, member: Member, hedge: bool) -> None:
        self.used.append(member)
        attempt = _Attempt(self, member, time.monotonic(), hedge=hedge)
        self.running.append(attempt)
        attempt.begin(self.endpoint.ctx.settings.channel_open_timeout_s)

    def _arm_hedge(self) -> None:
        """With one open running and another member waiting, ask that one too
        once the first is slower than the learned bound (qanat.gateway.hedge)."""
        settings = self.endpoint.ctx.settings
        if self.hedge_timer is not None:
            self.hedge_timer.cancel()
            self.hedge_timer = None
        if not (self.queue and len(self.running) == 1 and settings.hedge.enabled and self.hedge_ok):
            return
        first = self.running[0]
        bound = hedge_after_s(self.endpoint.open_times.p90(), settings.hedge)
        wait_s = max(0.0, first.started + bound - time.monotonic())
        self.hedge_timer = self.loop.call_later(wait_s, self._hedge)

    def _hedge(self) -> None:
        # The first connector is slow: ask the next one as well, unless it is
        # cooling down or draining (those stay a last resort, tried in turn).
        self.hedge_timer = None
        if self.finished or not self.queue:
            return
        ep = self.endpoint
        member = self.queue.pop(0)
        if member.health(time.monotonic(), ep.pool.policy) in (Health.COOLING, Health.DRAINING):
            self.queue.insert(0, member)
            self.hedge_ok = False
            return
        if cast("Tunnel", member.tunnel).serving:
            self.hedged = True
            ep.connections_retried += 1
            self._start(member, hedge=True)
        else:
            self._arm_hedge()

    def _settled(self, attempt: _Attempt, exc: BaseException | None) -> None:
        """One attempt ended: the first to open wins, the others are closed."""
        if attempt in self.running:
            self.running.remove(attempt)
        reason = self._outcome(attempt, exc)
        if reason is None:
            if self.finished:
                self._discard(attempt)  # another won first, or the app left
            else:
                self._win(attempt)
            return
        if self.finished:
            return
        self.reasons.append(f"tunnel {attempt.tunnel.id}: {reason}")
        if self.running:
            self._arm_hedge()  # the hedge goes on alone; the next may hedge it
        else:
            self._next()

    def _win(self, attempt: _Attempt) -> None:
        ep = self.endpoint
        self._finish()
        if self.hedged:
            ep.ctx.events.hedged(ep.stage_key, str(ep.port), "second" if attempt.hedge else "first")
        splice = attempt.splice
        splice.owner = attempt.member
        attempt.tunnel.track(splice)
        ep.ctx.events.channel_opened(ep.stage_key, str(ep.port), time.perf_counter() - self.started)
        transport = self.transport
        assert transport is not None
        if splice.tentative:
            splice.on_verdict = lambda ok, reason: self._verdict(attempt, ok, reason)
            if self.relay is None:
                # Until the dial's outcome, what goes into the channel is kept.
                splice.replay = []
                splice.replay_left = EARLY_BYTES
                self._await_verdict(attempt)
        if self.relay is not None:
            self.relay.opened(transport)
        splice.attach_tcp(transport, self.early, self.eof)
        self.early = []

    def _fail(self) -> None:
        ep = self.endpoint
        self._finish()
        ep.open_connections -= 1
        ep.connections_failed += 1
        transport = self.transport
        assert transport is not None
        source = str((transport.get_extra_info("peername") or ("?",))[0])
        reason = "; ".join(self.reasons) or "no connector serves this port"
        ep.log.warning("app connection from %s failed: %s", source, reason)
        ep.recent_failures.add("channel", source, reason)
        if self.relay is not None:
            self.relay.failed(transport, reason)
            return
        tcpclose.close_after_refusal(transport)  # FIN: closed without data

    def _finish(self) -> None:
        self.finished = True
        if self.hedge_timer is not None:
            self.hedge_timer.cancel()
            self.hedge_timer = None

    def _outcome(self, attempt: _Attempt, exc: BaseException | None) -> str | None:
        """Book one finished attempt in the pool; None when its channel opened."""
        ep = self.endpoint
        pool = ep.pool
        member, tunnel, token = attempt.member, attempt.tunnel, attempt.token
        if exc is None:
            now = time.monotonic()
            ep.open_times.add(now - attempt.started)
            if attempt.splice.tentative:
                # Confirmed before the connector's dial: healthy or failed
                # once it is known (_verdict).
                pool.carrying(member, token, now)
            elif pool.succeeded(member, token, now):
                self._back_in_rotation(tunnel)
            return None
        if isinstance(exc, (ChannelOpenFailed, TimeoutError)):
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {ep.ctx.settings.channel_open_timeout_s:g}s"
            else:
                reason = exc.reason or str(exc)
            if not tunnel.serving:
                pool.abandoned(member, token)  # the tunnel is going away
            else:
                self._booked_failure(attempt, reason)
            return reason
        # A bug must not leave the app connection hanging.
        ep.log.error("opening a channel on tunnel %d failed unexpectedly", tunnel.id, exc_info=exc)
        pool.abandoned(member, token)
        return f"internal error {exc!r}"

    def _back_in_rotation(self, tunnel: Tunnel) -> None:
        self.endpoint.log.info(
            "tunnel %d (connector %s) back in rotation: a channel opened",
            tunnel.id,
            tunnel.identity,
        )

    def _booked_failure(self, attempt: _Attempt, reason: str) -> None:
        ep = self.endpoint
        member, tunnel = attempt.member, attempt.tunnel
        tunnel.channels_failed += 1
        if ep.pool.failed(member, attempt.token, time.monotonic(), reason):
            ep.log.warning(
                "tunnel %d (connector %s) taken out of rotation for %gs: "
                "%d channel opens in a row failed, last: %s",
                tunnel.id,
                tunnel.identity,
                ep.pool.policy.cooldown_s,
                member.failures_in_row,
                reason,
            )

    def _await_verdict(self, attempt: _Attempt) -> None:
        """Bound the wait for an early-confirmed channel's first sign of life.

        A connector that confirmed early and then went silent (frozen, or
        its dial hangs) would hold the app connection until dead-peer
        detection. While nothing of the app's has gone into the channel, the
        endpoint cannot have received anything, so after the hedge bound the
        app connection goes to another connector, if one serves the port.
        """
        settings = self.endpoint.ctx.settings
        if not settings.hedge.enabled:
            return
        bound = hedge_after_s(self.endpoint.open_times.p90(), settings.hedge)
        self.verdict_timer = self.loop.call_later(bound, self._verdict_overdue, attempt, bound)

    def _verdict_overdue(self, attempt: _Attempt, bound: float) -> None:
        self.verdict_timer = None
        splice = attempt.splice
        if not splice.tentative or splice.replay != [] or splice._tcp_eof:
            return  # answered, or the app's bytes went in: wait as for any channel
        if not any(self._untried()):
            self._await_verdict(attempt)  # nowhere else to go: look again later
            return
        splice.settle(False, f"no sign of the endpoint within {bound:g}s of an early confirmation")

    def _untried(self) -> list[Member]:
        """Serving members not tried for this app connection, in the pool's order."""
        tried = {id(m) for m in self.used}
        return [
            m
            for m in self.endpoint.pool.order(time.monotonic())
            if id(m) not in tried and cast("Tunnel", m.tunnel).serving and not is_remote(m)
        ]

    def _verdict(self, attempt: _Attempt, ok: bool | None, reason: str) -> None:
        """The outcome of the connector's dial of an early-confirmed channel."""
        if self.verdict_timer is not None:
            self.verdict_timer.cancel()
            self.verdict_timer = None
        member, splice = attempt.member, attempt.splice
        if ok:
            if Pool.healthy(member):
                self._back_in_rotation(attempt.tunnel)
            return
        if ok is None:  # the channel ended before the dial's outcome
            self.endpoint.pool.abandoned(member, attempt.token)
            return
        self._booked_failure(attempt, reason)
        replay = splice.replay
        transport = self.transport
        if (
            replay is None
            or self.relay is not None
            or transport is None
            or transport.is_closing()
            or splice.owner is not member
        ):
            # Nothing to hand on (more was sent than kept, or the app is
            # gone): the app connection ends, as with a refused open.
            self.endpoint.log.info(
                "tunnel %d: %s after the channel was confirmed; the app connection ends",
                attempt.tunnel.id,
                reason,
            )
            splice.close()
            return
        self._take_back(attempt, replay, reason)

    def _take_back(self, attempt: _Attempt, replay: list[bytes], reason: str) -> None:
        """Give the app connection, with what it sent, to the next connector."""
        splice = attempt.splice
        transport = self.transport
        assert transport is not None
        # The failed channel no longer carries this app connection.
        splice.owner = None
        attempt.member.open -= 1
        attempt.member.total -= 1
        attempt.tunnel.untrack(splice)
        eof = splice._tcp_eof
        splice.tcp = None
        splice.close()
        transport.set_protocol(self)
        self.early = replay
        self.early_bytes = sum(len(chunk) for chunk in replay)
        self.eof = eof
        if not eof and self.early_bytes < EARLY_BYTES:
            transport.resume_reading()  # the channel may have paused it
        self.finished = False
        self.reasons.append(f"tunnel {attempt.tunnel.id}: {reason}")
        # Connectors may have joined since the app connected.
        self.queue = self._untried()
        if self.running:
            self._arm_hedge()
        else:
            self._next()

    def _discard(self, attempt: _Attempt) -> None:
        """A channel that opened for an app connection another channel already took."""
        member = attempt.member
        # succeeded() or carrying() counted it as a carried connection; no
        # app rides on it.
        member.open -= 1
        member.total -= 1
        splice = attempt.splice
        if splice.tentative:  # no verdict on the dial is coming for it
            splice.tentative = False
            self.endpoint.pool.abandoned(member, attempt.token)
        splice.close()

    def _splice_done(self, splice: Splice) -> None:
        member = splice.owner
        if not isinstance(member, Member):
            return  # an attempt given up before it opened: nothing was counted
        self.endpoint.open_connections -= 1
        self.endpoint.bytes_total += splice.sent + splice.received
        Pool.closed(member)
        cast("Tunnel", member.tunnel).untrack(splice)

    def data_received(self, data: bytes) -> None:
        # Only while the channel is opening: keep the bytes; past
        # EARLY_BYTES stop reading until a connector takes the connection.
        # (Pausing at the first read, as before, cost two epoll changes per
        # app connection, and bounded nothing better: one read is 256 KiB.)
        self.early.append(data)
        self.early_bytes += len(data)
        if self.early_bytes >= EARLY_BYTES:
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # Only reached while the channel is still opening: afterwards the
        # splice owns the transport. Attempts still running finish on their
        # own (each bounded by the open timeout); one that opens later is
        # closed without touching this app.
        self.lost = True
        if self.started and not self.finished:
            self.endpoint.open_connections -= 1
            self._finish()


class PortTable:
    """All open ports of the gateway (TCP and UDP), keyed by (bind address, port, proto)."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.open: dict[PortKey, GatewayPort] = {}
        # Listeners being created, so a second connector joins instead of
        # failing with "address in use" against the first one's socket.
        self._binding: dict[PortKey, asyncio.Future[GatewayPort | None]] = {}

    def _conflict(self, tunnel: Tunnel, endpoint: GatewayPort, remote: Remote) -> str | None:
        stage = tunnel.stage
        kind = "" if endpoint.proto == "tcp" else "UDP "
        if endpoint.stage_key != stage.key:
            return (
                f"{kind}port {remote.local_port} is reserved by another stage on "
                f"{stage.bind_host}; choose another port"
            )
        if self.ctx.settings.allow_target_mismatch:
            return None
        for other in endpoint.pool.members:
            if other.target != remote.target:
                return (
                    f"Server cannot listen on {remote.describe()}: {kind}port "
                    f"{remote.local_port} is already served with target {other.target} by "
                    f"connector {cast('Tunnel', other.tunnel).identity} (tunnel "
                    f"{other.tunnel.id}); declare the same target, or ask the operator to "
                    "allow different targets per port"
                )
        return None

    @staticmethod
    def _key(stage: StageConfig, remote: Remote) -> PortKey:
        proto: Proto = "udp" if remote.remote_proto == "udp" else "tcp"
        return (stage.bind_host, int(remote.local_port), proto)

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        """Put ``tunnel`` into the pools of its remotes (TCP and UDP), creating listeners.

        All or nothing: on any error the tunnel serves nothing and the error
        text (for the ``config`` refusal) is returned. Yields to the event
        loop every :data:`BIND_BATCH` new listeners, so a connector declaring
        hundreds of ports does not stall the other tunnels.
        """
        stage = tunnel.stage
        refusal = contested_port(self.ctx.stages.stages(), stage, remotes)
        if refusal is not None:
            return refusal
        for r in remotes:
            existing = self.open.get(self._key(stage, r))
            if existing is not None:
                error = self._conflict(tunnel, existing, r)
                if error is not None:
                    return error
        joined: list[GatewayPort] = []
        created = 0
        for r in remotes:
            key = self._key(stage, r)
            endpoint = self.open.get(key)
            if endpoint is None and key in self._binding:
                # Another connector is creating this listener right now: join it.
                endpoint = await asyncio.shield(self._binding[key])
            if endpoint is None:
                try:
                    endpoint = await self._create(stage, r, key)
                except OSError as exc:
                    self._leave(tunnel, joined)
                    if exc.errno == errno.EADDRINUSE:
                        why = f"{exc.strerror or exc} (port in use)"
                    else:
                        why = f"stage {stage.key}: " + unbindable_text(stage.bind_host, exc)
                    return f"Server cannot listen on {r.describe()}: {why}"
                created += 1
                if created % BIND_BATCH == 0:
                    await asyncio.sleep(0)
            # Checked again: another tunnel may have joined while we yielded.
            error = self._conflict(tunnel, endpoint, r)
            if error is not None:
                self._close_if_empty(endpoint)
                self._leave(tunnel, joined)
                return error
            endpoint.pool.add(Member(tunnel, r.target, r.channel_extra))
            joined.append(endpoint)
        tunnel.ports = joined
        return None

    def _new(self, stage: StageConfig, remote: Remote) -> GatewayPort:
        if remote.remote_proto == "udp":
            from qanat.gateway.udp import UdpPort

            return UdpPort(self.ctx, stage, remote)
        return TcpPort(self.ctx, stage, remote)

    async def _create(self, stage: StageConfig, remote: Remote, key: PortKey) -> GatewayPort:
        """Create and register the listener of ``key``; concurrent binders wait for it.

        Raises:
            OSError: the port cannot be bound.
        """
        waiter: asyncio.Future[GatewayPort | None] = asyncio.get_running_loop().create_future()
        self._binding[key] = waiter
        endpoint = self._new(stage, remote)
        try:
            await endpoint.listen()
        except BaseException:
            waiter.set_result(None)
            raise
        finally:
            del self._binding[key]
        self.open[key] = endpoint
        waiter.set_result(endpoint)
        return endpoint

    def _leave(self, tunnel: Tunnel, endpoints: list[GatewayPort]) -> None:
        for endpoint in endpoints:
            endpoint.remove_tunnel(tunnel)
            self._close_if_empty(endpoint)

    def _close_if_empty(self, endpoint: GatewayPort) -> None:
        if not endpoint.pool.members and self.open.get(endpoint.key) is endpoint:
            endpoint.close()
            del self.open[endpoint.key]

    async def join_remote(self, stage: StageConfig, remote: Remote, tunnel: Any) -> str | None:
        """Cluster hook: put another node (``tunnel``, a RemoteTunnel) into a TCP port's pool.

        Creates the port's listener when this node has no connector for it.
        Returns None, or why the node cannot be added (undone by :meth:`unbind`).
        """
        key = self._key(stage, remote)
        port = self.open.get(key)
        if port is None and key in self._binding:
            port = await asyncio.shield(self._binding[key])
        if port is None:
            try:
                port = await self._create(stage, remote, key)
            except OSError as exc:
                return f"cannot listen on {stage.bind_host}:{remote.local_port}: {exc}"
        if port.stage_key != stage.key:
            return f"port {remote.local_port} is served for another stage on this node"
        if not self.ctx.settings.allow_target_mismatch and any(
            m.target != remote.target for m in port.pool.members
        ):
            self._close_if_empty(port)
            return f"port {remote.local_port} is served with another target on this node"
        port.pool.add(Member(tunnel, remote.target, remote.channel_extra))
        tunnel.ports = [port]
        return None

    def unbind(self, tunnel: Tunnel) -> list[str]:
        """Remove ``tunnel`` from every pool; close listeners left empty.

        Returns the ports whose listener closed (no tunnel serves them now),
        as ``8081`` or ``8053/udp``.
        """
        endpoints, tunnel.ports = tunnel.ports, []
        closed: list[str] = []
        for endpoint in endpoints:
            endpoint.remove_tunnel(tunnel)
            if not endpoint.pool.members:
                closed.append(endpoint.name.rsplit(":", 1)[1])
            self._close_if_empty(endpoint)
        return closed

    def for_stage(self, stage_key: str) -> list[GatewayPort]:
        return [e for e in self.open.values() if e.stage_key == stage_key]

    def apply_allowlist(self, stage: StageConfig) -> None:
        """A stage's allowlist changed: the next app connection gets the new one."""
        allowlist = Allowlist.parse(stage.allow_cidrs)
        for endpoint in self.for_stage(stage.key):
            if endpoint.allowlist != allowlist:
                endpoint.allowlist = allowlist
                endpoint.log.info("apps now allowed from %s", allowlist)

    def close_all(self) -> None:
        for endpoint in self.open.values():
            endpoint.close()
        self.open.clear()

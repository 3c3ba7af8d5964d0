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
from collections.abc import Callable
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

    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
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


def _session_of(splice: Splice) -> Callable[[], Any]:
    return lambda: splice.chan_end


class _Attempt:
    """One channel open for one app connection on one member."""

    __slots__ = ("hedge", "member", "splice", "started", "task", "token", "tunnel")

    def __init__(
        self, conn: AppConnection, member: Member, now: float, hedge: bool = False
    ) -> None:
        ep = conn.endpoint
        self.hedge = hedge
        self.member = member
        self.tunnel = cast("Tunnel", member.tunnel)
        self.token = ep.pool.begin(member, now)
        self.started = now
        # A fresh splice per attempt: an abandoned attempt's channel may
        # still open later, and must not touch this app connection.
        self.splice = Splice(on_done=conn._splice_done)
        timeout_s = ep.ctx.settings.channel_open_timeout_s
        self.task: asyncio.Task[Any] = asyncio.ensure_future(
            self.tunnel.ssh.open_channel(
                member.extra, _session_of(self.splice), timeout_s=timeout_s
            )
        )


class RelayReply(Protocol):
    """How a connection relayed from another node is answered (qanat.cluster.link)."""

    def opened(self, transport: asyncio.Transport) -> None: ...

    def failed(self, transport: asyncio.Transport, reason: str) -> None: ...


def is_remote(member: Member) -> bool:
    """Whether ``member`` is another gateway node (qanat.cluster), not a local tunnel."""
    return bool(getattr(member.tunnel, "remote", False))


class AppConnection(asyncio.Protocol):
    """An app connection on an endpoint, until its channel is open.

    Reading is paused until a connector has accepted the channel, so nothing
    the app sends early is lost or buffered by us.

    Cluster hook: with ``relay`` the connection came from another gateway
    node over the node link (the app's source was checked there); only
    this node's own tunnels are tried, and the outcome is answered through
    ``relay`` before any byte flows.
    """

    def __init__(self, endpoint: TcpPort, relay: RelayReply | None = None) -> None:
        self.endpoint = endpoint
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.early: list[bytes] = []
        self.eof = False

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
        transport.pause_reading()
        ep.open_connections += 1
        ep.connections_total += 1
        self.task = ep.ctx.tasks.spawn(self._open(), name=f"open-{ep.port}")

    async def _open(self) -> None:
        # Every member is tried at most once, so this loop is bounded by the
        # pool size, and each try by the open timeout; at most two tries run
        # at once (the second one a hedge).
        ep = self.endpoint
        pool = ep.pool
        transport = self.transport
        assert transport is not None
        settings = ep.ctx.settings
        timeout_s = settings.channel_open_timeout_s
        started = time.perf_counter()
        reasons: list[str] = []
        queue = [
            m
            for m in pool.order(time.monotonic())
            if cast("Tunnel", m.tunnel).serving and (self.relay is None or not is_remote(m))
        ]
        running: dict[asyncio.Task[Any], _Attempt] = {}
        winner: _Attempt | None = None
        hedged = False
        hedge_ok = True  # until the next candidate turned out not to be healthy
        tried = 0
        try:
            while not self.lost and (queue or running):
                if not running:
                    member = queue.pop(0)
                    if not cast("Tunnel", member.tunnel).serving:
                        continue
                    if tried:
                        ep.connections_retried += 1
                    tried += 1
                    attempt = _Attempt(self, member, time.monotonic())
                    running[attempt.task] = attempt
                wait_s: float | None = None
                if queue and len(running) == 1 and settings.hedge.enabled and hedge_ok:
                    first = next(iter(running.values()))
                    bound = hedge_after_s(ep.open_times.p90(), settings.hedge)
                    wait_s = max(0.0, first.started + bound - time.monotonic())
                done, _ = await asyncio.wait(
                    running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    # The first connector is slow: ask the next one as well, unless
                    # it is cooling down or draining (those stay a last resort,
                    # tried in turn).
                    member = queue.pop(0)
                    now = time.monotonic()
                    if member.health(now, pool.policy) in (Health.COOLING, Health.DRAINING):
                        queue.insert(0, member)
                        hedge_ok = False
                        continue
                    if cast("Tunnel", member.tunnel).serving:
                        hedged = True
                        ep.connections_retried += 1
                        attempt = _Attempt(self, member, time.monotonic(), hedge=True)
                        running[attempt.task] = attempt
                    continue
                for task in done:
                    attempt = running.pop(task)
                    reason = self._outcome(attempt, timeout_s)
                    if reason is None:
                        if winner is None:
                            winner = attempt
                        else:
                            self._discard(attempt)
                    else:
                        reasons.append(f"tunnel {attempt.tunnel.id}: {reason}")
                if winner is not None:
                    break
        finally:
            # Losers finish on their own (each bounded by the open timeout);
            # one that opens later is closed without touching this app.
            for attempt in running.values():
                ep.ctx.tasks.spawn(
                    self._settle_loser(attempt, timeout_s), name=f"hedge-loser-{ep.port}"
                )
        if hedged and winner is not None:
            ep.ctx.events.hedged(ep.stage_key, str(ep.port), "second" if winner.hedge else "first")
        if winner is not None:
            splice = winner.splice
            member = winner.member
            splice.owner = member
            winner.tunnel.track(splice)
            if self.lost:
                splice.close()
                return
            ep.ctx.events.channel_opened(ep.stage_key, str(ep.port), time.perf_counter() - started)
            if self.relay is not None:
                self.relay.opened(transport)
            splice.attach_tcp(transport, self.early, self.eof)
            return
        ep.open_connections -= 1
        if self.lost:
            return
        ep.connections_failed += 1
        source = str((transport.get_extra_info("peername") or ("?",))[0])
        reason = "; ".join(reasons) or "no connector serves this port"
        ep.log.warning("app connection from %s failed: %s", source, reason)
        ep.recent_failures.add("channel", source, reason)
        if self.relay is not None:
            self.relay.failed(transport, reason)
            return
        tcpclose.close_after_refusal(transport)  # FIN: closed without data

    def _outcome(self, attempt: _Attempt, timeout_s: float) -> str | None:
        """Book one finished attempt in the pool; None when its channel opened."""
        ep = self.endpoint
        pool = ep.pool
        member, tunnel, token = attempt.member, attempt.tunnel, attempt.token
        task = attempt.task
        exc = task.exception() if not task.cancelled() else TimeoutError()
        if exc is None:
            now = time.monotonic()
            ep.open_times.add(now - attempt.started)
            if pool.succeeded(member, token, now):
                ep.log.info(
                    "tunnel %d (connector %s) back in rotation: a channel opened",
                    tunnel.id,
                    tunnel.identity,
                )
            return None
        if isinstance(exc, (ChannelOpenFailed, TimeoutError)):
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout_s:g}s"
            else:
                reason = exc.reason or str(exc)
            if not tunnel.serving:
                pool.abandoned(member, token)  # the tunnel is going away
            else:
                tunnel.channels_failed += 1
                if pool.failed(member, token, time.monotonic(), reason):
                    ep.log.warning(
                        "tunnel %d (connector %s) taken out of rotation for %gs: "
                        "%d channel opens in a row failed, last: %s",
                        tunnel.id,
                        tunnel.identity,
                        pool.policy.cooldown_s,
                        member.failures_in_row,
                        reason,
                    )
            return reason
        # A bug must not leave the app connection hanging.
        ep.log.error("opening a channel on tunnel %d failed unexpectedly", tunnel.id, exc_info=exc)
        pool.abandoned(member, token)
        return f"internal error {exc!r}"

    def _discard(self, attempt: _Attempt) -> None:
        """A channel that opened for an app connection another channel already took."""
        member = attempt.member
        # succeeded() counted it as a carried connection; no app rides on it.
        member.open -= 1
        member.total -= 1
        attempt.splice.close()

    async def _settle_loser(self, attempt: _Attempt, timeout_s: float) -> None:
        try:
            await asyncio.wait([attempt.task])
        except asyncio.CancelledError:  # the gateway is closing
            attempt.task.cancel()
            self.endpoint.pool.abandoned(attempt.member, attempt.token)
            raise
        if self._outcome(attempt, timeout_s) is None:
            self._discard(attempt)

    def _splice_done(self, splice: Splice) -> None:
        member = splice.owner
        if not isinstance(member, Member):
            return  # an attempt given up before it opened: nothing was counted
        self.endpoint.open_connections -= 1
        self.endpoint.bytes_total += splice.sent + splice.received
        Pool.closed(member)
        cast("Tunnel", member.tunnel).untrack(splice)

    def data_received(self, data: bytes) -> None:
        # Only while the channel is opening (see Splice.early): keep the
        # bytes and stop reading until a connector takes the connection.
        self.early.append(data)
        assert self.transport is not None
        self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # Only reached while the channel is still opening: afterwards the
        # splice owns the transport.
        self.lost = True


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

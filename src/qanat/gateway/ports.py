"""The stage endpoints: one listener per declared port, a pool of tunnels behind it.

``secure-gateway:<port>`` of a stage is an :class:`Endpoint`: a TCP listener
on the stage's bind address plus the pool of tunnels that serve that port
(several connectors may declare the same port; by default they must agree
on the target). Every app connection accepted there becomes one ``chisel``
channel on one tunnel of the pool; :mod:`qanat.gateway.balancer` decides the
order in which tunnels are tried, and an app connection whose channel cannot
be opened on one tunnel (refused, no answer within the open timeout, tunnel
closing) is tried on the next before it is given up. Only when every tunnel
failed is the app connection closed, and the log line names each tunnel's
reason.

The listener exists while at least one tunnel serves the port (draining and
cooling tunnels included: they are still tried as a last resort).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from qanat.errors import ChannelOpenFailed
from qanat.gateway.balancer import Member, Pool, PoolPolicy, Strategy
from qanat.gateway.bindcheck import unbindable_text
from qanat.gateway.failures import RecentFailures
from qanat.gateway.refusals import RefusalLog
from qanat.gateway.udp import UdpPortTable
from qanat.logs import ContextLogger
from qanat.net import tcpclose
from qanat.net.splice import Splice
from qanat.ops import metrics
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway
    from qanat.gateway.stages import StageConfig
    from qanat.gateway.tunnel import Tunnel

_log = logging.getLogger("qanat.gateway.ports")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Listeners created between two yields to the event loop while binding the
#: ports of one connector (binding 1,000 ports takes ~0.1 s in total).
BIND_BATCH = 32


def pool_policy(gateway: Gateway) -> PoolPolicy:
    s = gateway.settings
    return PoolPolicy(
        strategy=Strategy(s.balance),
        failure_threshold=max(1, s.failure_threshold),
        cooldown_s=s.cooldown_s,
        stall_s=s.channel_stall_s,
    )


class Endpoint:
    """One ``secure-gateway:<port>`` of one stage."""

    def __init__(self, gateway: Gateway, stage: StageConfig, remote: Remote) -> None:
        self.gateway = gateway
        self.stage_key = stage.key
        self.bind_host = stage.bind_host
        self.port = int(remote.local_port)
        # The target of the first connector; members carry their own.
        self.target = remote.target
        self.extra = remote.channel_extra
        self.allow: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in stage.allow_cidrs
        )
        self.pool = Pool(pool_policy(gateway))
        self.server: asyncio.Server | None = None
        self.open_connections = 0
        self.connections_total = 0
        self.connections_failed = 0
        self.connections_retried = 0
        self.bytes_total = 0  # both directions, of finished connections
        self.refused_sources = 0
        self.recent_failures = RecentFailures()  # for the status page
        self.log = ContextLogger(_log, stage=stage.key, port=self.port)

    @property
    def tunnels(self) -> list[Tunnel]:
        """The tunnels of the pool, in the order they joined."""
        return [cast("Tunnel", m.tunnel) for m in self.pool.members]

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

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.allow)

    def candidates(self) -> list[Tunnel]:
        """The tunnels in the order to try for the next connection."""
        return [cast("Tunnel", m.tunnel) for m in self.pool.order(time.monotonic())]

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        policy = self.pool.policy
        return {
            "endpoint": f"secure-gateway:{self.port}",
            "bind": f"{self.bind_host}:{self.port}",
            "target": self.target,
            "tunnels": [m.tunnel.id for m in self.pool.members],
            "pool": [
                {
                    "tunnel": m.tunnel.id,
                    "connector": cast("Tunnel", m.tunnel).identity,
                    "target": m.target,
                    "health": m.health(now, policy).value,
                    "open_connections": m.open,
                    "connections_total": m.total,
                    "opens_failed": m.failed,
                    "failures_in_row": m.failures_in_row,
                    "cooling_for_s": round(max(0.0, m.cooling_until - now), 3)
                    if m.cooling_until
                    else 0.0,
                    "last_error": m.last_error,
                }
                for m in self.pool.members
            ],
            "open_connections": self.open_connections,
            "connections_total": self.connections_total,
            "connections_failed": self.connections_failed,
            "connections_retried": self.connections_retried,
            "bytes_total": self.bytes_total,
            "refused_sources": self.refused_sources,
            "port": self.port,
            "recent_failures": self.recent_failures.snapshot(),
        }


def _session_of(splice: Splice) -> Callable[[], Any]:
    return lambda: splice.chan_end


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

    def __init__(self, endpoint: Endpoint, relay: RelayReply | None = None) -> None:
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
            # channel), counted, logged within RefusalLog's bound.
            ep.refused_sources += 1
            ep.gateway.ports.refusals.refused(
                ep.log, f"{ep.stage_key}:{ep.port}", str(peer[0]), ep.refused_sources
            )
            ep.recent_failures.add("allowlist", str(peer[0]), "source not in the stage allowlist")
            tcpclose.reset(transport)
            return
        transport.pause_reading()
        ep.open_connections += 1
        ep.connections_total += 1
        self.task = ep.gateway.tasks.spawn(self._open(), name=f"open-{ep.port}")

    async def _open(self) -> None:
        # Every member is tried at most once, so this loop is bounded by the
        # pool size, and each try by the open timeout.
        ep = self.endpoint
        pool = ep.pool
        transport = self.transport
        assert transport is not None
        timeout_s = ep.gateway.settings.channel_open_timeout_s
        started = time.perf_counter()
        reasons: list[str] = []
        for attempt, member in enumerate(pool.order(time.monotonic())):
            if self.lost:
                break
            tunnel = cast("Tunnel", member.tunnel)
            ssh = tunnel.ssh
            if ssh is None or not tunnel.serving or (self.relay is not None and is_remote(member)):
                continue
            if attempt:
                ep.connections_retried += 1
            token = pool.begin(member, time.monotonic())
            # A fresh splice per attempt: an abandoned attempt's channel may
            # still open later, and must not touch this app connection.
            splice = Splice(on_done=self._splice_done)
            try:
                await ssh.open_channel(member.extra, _session_of(splice), timeout_s=timeout_s)
            except (ChannelOpenFailed, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    reason = f"no answer within {timeout_s:g}s"
                else:
                    reason = exc.reason or str(exc)
                reasons.append(f"tunnel {tunnel.id}: {reason}")
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
                continue
            except Exception as exc:  # a bug must not leave the app connection hanging
                ep.log.exception("opening a channel on tunnel %d failed unexpectedly", tunnel.id)
                reasons.append(f"tunnel {tunnel.id}: internal error {exc!r}")
                pool.abandoned(member, token)
                continue
            if pool.succeeded(member, token, time.monotonic()):
                ep.log.info(
                    "tunnel %d (connector %s) back in rotation: a channel opened",
                    tunnel.id,
                    tunnel.identity,
                )
            splice.owner = member
            tunnel.track(splice)
            if self.lost:
                splice.close()
                return
            metrics.channel_opened(ep.stage_key, ep.port, time.perf_counter() - started)
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
    """All endpoints of the gateway, keyed by (bind address, port)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.endpoints: dict[tuple[str, int], Endpoint] = {}
        self.udp = UdpPortTable(gateway)  # UDP remotes (gateway/udp.py)
        self.refusals = RefusalLog()
        # Listeners being created, so a second connector joins instead of
        # failing with "address in use" against the first one's socket.
        self._binding: dict[tuple[str, int], asyncio.Future[Endpoint | None]] = {}

    def _conflict(self, tunnel: Tunnel, endpoint: Endpoint, remote: Remote) -> str | None:
        stage = tunnel.stage
        if endpoint.stage_key != stage.key:
            return (
                f"port {remote.local_port} is reserved by another stage on {stage.bind_host}; "
                "choose another port"
            )
        if self.gateway.settings.allow_target_mismatch:
            return None
        for other in endpoint.pool.members:
            if other.target != remote.target:
                return (
                    f"Server cannot listen on {remote.describe()}: port {remote.local_port} "
                    f"is already served with target {other.target} by connector "
                    f"{cast('Tunnel', other.tunnel).identity} (tunnel {other.tunnel.id}); "
                    "declare the same target, or ask the operator to allow different "
                    "targets per port"
                )
        return None

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        """Put ``tunnel`` into the pools of its remotes, creating listeners.

        All or nothing: on any error the tunnel serves nothing and the error
        text (for the ``config`` refusal) is returned. Yields to the event
        loop every :data:`BIND_BATCH` new listeners, so a connector declaring
        hundreds of ports does not stall the other tunnels.
        """
        stage = tunnel.stage
        for r in remotes:
            existing = self.endpoints.get((stage.bind_host, int(r.local_port)))
            if existing is not None:
                error = self._conflict(tunnel, existing, r)
                if error is not None:
                    return error
        joined: list[Endpoint] = []
        created = 0
        for r in remotes:
            key = (stage.bind_host, int(r.local_port))
            endpoint = self.endpoints.get(key)
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
        tunnel.endpoints = joined
        return None

    async def _create(self, stage: StageConfig, remote: Remote, key: tuple[str, int]) -> Endpoint:
        """Create and register the listener of ``key``; concurrent binders wait for it.

        Raises:
            OSError: the port cannot be bound.
        """
        waiter: asyncio.Future[Endpoint | None] = asyncio.get_running_loop().create_future()
        self._binding[key] = waiter
        endpoint = Endpoint(self.gateway, stage, remote)
        try:
            await endpoint.listen()
        except BaseException:
            waiter.set_result(None)
            raise
        finally:
            del self._binding[key]
        self.endpoints[key] = endpoint
        waiter.set_result(endpoint)
        return endpoint

    def _leave(self, tunnel: Tunnel, endpoints: list[Endpoint]) -> None:
        for endpoint in endpoints:
            endpoint.pool.remove(tunnel)
            self._close_if_empty(endpoint)

    def _close_if_empty(self, endpoint: Endpoint) -> None:
        key = (endpoint.bind_host, endpoint.port)
        if not endpoint.pool.members and self.endpoints.get(key) is endpoint:
            endpoint.close()
            del self.endpoints[key]

    async def join_remote(self, stage: StageConfig, remote: Remote, tunnel: Any) -> str | None:
        """Cluster hook: put another node (``tunnel``, a RemoteTunnel) into a port's pool.

        Creates the port's listener when this node has no connector for it.
        Returns None, or why the node cannot be added (undone by :meth:`unbind`).
        """
        key = (stage.bind_host, int(remote.local_port))
        endpoint = self.endpoints.get(key)
        if endpoint is None and key in self._binding:
            endpoint = await asyncio.shield(self._binding[key])
        if endpoint is None:
            try:
                endpoint = await self._create(stage, remote, key)
            except OSError as exc:
                return f"cannot listen on {stage.bind_host}:{remote.local_port}: {exc}"
        if endpoint.stage_key != stage.key:
            return f"port {remote.local_port} is served for another stage on this node"
        if not self.gateway.settings.allow_target_mismatch and any(
            m.target != remote.target for m in endpoint.pool.members
        ):
            self._close_if_empty(endpoint)
            return f"port {remote.local_port} is served with another target on this node"
        endpoint.pool.add(Member(tunnel, remote.target, remote.channel_extra))
        tunnel.endpoints = [endpoint]
        return None

    def unbind(self, tunnel: Tunnel) -> list[int]:
        """Remove ``tunnel`` from every pool; close listeners left empty.

        Returns the ports whose listener closed (no tunnel serves them now).
        """
        self.udp.unbind(tunnel)
        endpoints, tunnel.endpoints = tunnel.endpoints, []
        closed: list[int] = []
        for endpoint in endpoints:
            endpoint.pool.remove(tunnel)
            if not endpoint.pool.members:
                closed.append(endpoint.port)
            self._close_if_empty(endpoint)
        return closed

    def for_stage(self, stage_key: str) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.stage_key == stage_key]

    def close_all(self) -> None:
        self.udp.close_all()
        for endpoint in self.endpoints.values():
            endpoint.close()
        self.endpoints.clear()
        self.refusals.close()

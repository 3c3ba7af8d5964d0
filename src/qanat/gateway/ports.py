"""The stage endpoints: one listener per declared port, a pool of tunnels behind it.

``secure-gateway:<port>`` of a stage is an :class:`Endpoint`: a TCP listener
on the stage's bind address plus the tunnels that serve that port (several
connectors may declare the same port with the same target; they form a
pool). Every app connection accepted there becomes one ``chisel`` channel on
one tunnel of the pool, chosen round robin; when a channel cannot be opened
the next tunnel is tried before the app connection is given up.

The listener exists while at least one tunnel serves the port.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
from typing import TYPE_CHECKING, cast

from qanat.errors import ChannelOpenFailed
from qanat.gateway.bindcheck import unbindable_text
from qanat.gateway.refusals import RefusalLog
from qanat.logs import ContextLogger
from qanat.net.splice import Splice
from qanat.wire.remotes import Remote

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway
    from qanat.gateway.stages import StageConfig
    from qanat.gateway.tunnel import Tunnel

_log = logging.getLogger("qanat.gateway.ports")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Endpoint:
    """One ``secure-gateway:<port>`` of one stage."""

    def __init__(self, gateway: Gateway, stage: StageConfig, remote: Remote) -> None:
        self.gateway = gateway
        self.stage_key = stage.key
        self.bind_host = stage.bind_host
        self.port = int(remote.local_port)
        self.target = remote.target
        self.extra = remote.channel_extra
        self.allow: tuple[IpNetwork, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in stage.allow_cidrs
        )
        self.tunnels: list[Tunnel] = []
        self._next = 0
        self.server: asyncio.Server | None = None
        self.open_connections = 0
        self.connections_total = 0
        self.connections_failed = 0
        self.refused_sources = 0
        self.log = ContextLogger(_log, stage=stage.key, port=self.port)

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
        """The pool in the order to try for the next connection (round robin)."""
        pool = self.tunnels
        if not pool:
            return []
        start = self._next % len(pool)
        self._next = start + 1
        return pool[start:] + pool[:start]

    def snapshot(self) -> dict[str, object]:
        return {
            "endpoint": f"secure-gateway:{self.port}",
            "bind": f"{self.bind_host}:{self.port}",
            "target": self.target,
            "tunnels": [t.id for t in self.tunnels],
            "open_connections": self.open_connections,
            "connections_total": self.connections_total,
            "connections_failed": self.connections_failed,
            "refused_sources": self.refused_sources,
        }


class AppConnection(asyncio.Protocol):
    """An app connection on an endpoint, until its channel is open.

    Reading is paused until a connector has accepted the channel, so nothing
    the app sends early is lost or buffered by us.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ep = self.endpoint
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        if not ep.allows(str(peer[0])):
            # Closed at once (RST), counted, logged within RefusalLog's bound.
            transport.abort()
            ep.refused_sources += 1
            ep.gateway.ports.refusals.refused(
                ep.log, f"{ep.stage_key}:{ep.port}", str(peer[0]), ep.refused_sources
            )
            return
        transport.pause_reading()
        ep.open_connections += 1
        ep.connections_total += 1
        self.task = ep.gateway.tasks.spawn(self._open(), name=f"open-{ep.port}")

    async def _open(self) -> None:
        ep = self.endpoint
        transport = self.transport
        assert transport is not None
        timeout_s = ep.gateway.settings.channel_open_timeout_s
        splice = Splice(on_done=self._splice_done)
        reasons: list[str] = []
        for tunnel in ep.candidates():
            if tunnel.ssh is None:
                continue
            try:
                async with asyncio.timeout(timeout_s):
                    await tunnel.ssh.open_channel(ep.extra, lambda: splice.chan_end)
            except ChannelOpenFailed as exc:
                tunnel.channels_failed += 1
                reasons.append(f"tunnel {tunnel.id}: {exc.reason or exc}")
                continue
            except TimeoutError:
                tunnel.channels_failed += 1
                reasons.append(f"tunnel {tunnel.id}: no answer within {timeout_s:g}s")
                continue
            if self.lost:
                splice.close()
                return
            splice.owner = tunnel
            tunnel.track(splice)
            splice.attach_tcp(transport, self.early, self.eof)
            return
        ep.connections_failed += 1
        ep.open_connections -= 1
        ep.log.warning(
            "app connection from %s failed: %s",
            (transport.get_extra_info("peername") or ("?",))[0],
            "; ".join(reasons) or "no connector serves this port",
        )
        transport.abort()

    def _splice_done(self, splice: Splice) -> None:
        self.endpoint.open_connections -= 1
        tunnel = splice.owner
        if tunnel is not None:
            tunnel.untrack(splice)

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
        self.refusals = RefusalLog()

    async def bind(self, tunnel: Tunnel, remotes: tuple[Remote, ...]) -> str | None:
        """Put ``tunnel`` into the pools of its remotes, creating listeners.

        All or nothing: on any error the tunnel serves nothing and the error
        text (for the ``config`` refusal) is returned.
        """
        stage = tunnel.stage
        for r in remotes:
            existing = self.endpoints.get((stage.bind_host, int(r.local_port)))
            if existing is None:
                continue
            if existing.stage_key != stage.key:
                return (
                    f"port {r.local_port} is reserved by another stage on {stage.bind_host}; "
                    "choose another port"
                )
            if existing.target != r.target:
                return (
                    f"Server cannot listen on {r.describe()}: port {r.local_port} is already "
                    f"served with target {existing.target} by another connector of this stage"
                )
        created: list[Endpoint] = []
        for r in remotes:
            key = (stage.bind_host, int(r.local_port))
            endpoint = self.endpoints.get(key)
            if endpoint is None:
                endpoint = Endpoint(self.gateway, stage, r)
                try:
                    await endpoint.listen()
                except OSError as exc:
                    for made in created:
                        made.close()
                        self.endpoints.pop((made.bind_host, made.port), None)
                    if exc.errno == errno.EADDRINUSE:
                        why = f"{exc.strerror or exc} (port in use)"
                    else:
                        why = f"stage {stage.key}: " + unbindable_text(stage.bind_host, exc)
                    return f"Server cannot listen on {r.describe()}: {why}"
                if key in self.endpoints:  # raced with another tunnel's bind
                    endpoint.close()
                    endpoint = self.endpoints[key]
                else:
                    self.endpoints[key] = endpoint
                    created.append(endpoint)
            endpoint.tunnels.append(tunnel)
        return None

    def unbind(self, tunnel: Tunnel) -> None:
        """Remove ``tunnel`` from every pool; close listeners left empty."""
        for key, endpoint in list(self.endpoints.items()):
            if tunnel in endpoint.tunnels:
                endpoint.tunnels.remove(tunnel)
                if not endpoint.tunnels:
                    endpoint.close()
                    del self.endpoints[key]

    def for_stage(self, stage_key: str) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.stage_key == stage_key]

    def close_all(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()
        self.endpoints.clear()
        self.refusals.close()

"""One gateway node of a cluster: the hooks between the gateway and NATS.

:class:`ClusterNode` attaches to a running :class:`~qanat.gateway.server.Gateway`
whose stages come from a :class:`~qanat.store.stagesource.DatabaseStageSource`:

- **control**: a :class:`~qanat.cluster.control.ControlFollower` wakes the
  stage source on every control message (the database poll is the fallback);
- **presence out**: after every tunnel change (and on the heartbeat) the
  ports this node serves with its own connectors are written to presence;
- **presence in**: every (stage, port) another node holds becomes a
  :class:`~qanat.cluster.link.RemoteTunnel` member of that port's pool here
  (``PortTable.join_remote``), creating the port's listener if this node has
  no connector for it; members of nodes that left, drained or whose stage was
  deactivated are removed at once;
- **the node link**: a :class:`~qanat.cluster.link.LinkServer` on its own
  address; a relayed app connection is an ``AppConnection`` with a ``relay``
  answer, tried on this node's own connectors only (never forwarded again);
- **drain** (SIGTERM): see :meth:`ClusterNode.drain`.

Pools order local connectors before other nodes (``balancer.Pool.order``):
the balancer in front already spreads apps over nodes, and the hop costs a
round trip; other nodes are tried when no local connector is healthy or when
local ones refuse, so an app connection fails only when no connector on any
node can take it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from qanat.cluster import linkwire
from qanat.cluster.control import ControlFollower
from qanat.cluster.link import LinkDialer, LinkServer, RemoteTunnel
from qanat.cluster.natsbus import Bus, NatsSettings
from qanat.cluster.presence import DEFAULT_TTL_S, Holding, Presence
from qanat.errors import ConfigError
from qanat.gateway.ports import AppConnection, TcpPort, is_remote
from qanat.gateway.stages import StageConfig, StageEvent
from qanat.gateway.udp import RelayedFlows, UdpPort
from qanat.runtime import TaskOwner
from qanat.store.stagesource import DatabaseStageSource
from qanat.telemetry.counters import Family
from qanat.wire.remotes import decode_remote

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway
    from qanat.gateway.tunnel import Tunnel

log = logging.getLogger("qanat.cluster.node")

# TcpPort or UdpPort: the kind of port a relayed request asks for.
_PortT = TypeVar("_PortT", TcpPort, UdpPort)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """A gateway node's cluster options (``qanat gateway --nats ...``).

    Attributes:
        nats: where NATS is.
        node: this node's name (unique in the cluster; the pod name).
        link_host / link_port: the node link's listen address.
        link_advertise: ``host:port`` other nodes dial ("" = the listen
            address, which must then not be a wildcard).
        secret: the shared cluster secret (node link authentication).
        presence_ttl_s: presence entries expire this long after the last
            heartbeat.
        fallback_poll_s / safety_poll_s: database poll with NATS away / up.
        drain_timeout_s: SIGTERM waits this long for open app connections.
        drain_grace_s: after SIGTERM, how long the node keeps accepting
            (answering ``/readyz`` 503) so that the balancer stops sending
            before the listeners close.
        handback_s: after closing a tunnel while draining, how long to wait
            for another node to serve its ports before the next one.
    """

    nats: NatsSettings
    node: str
    secret: bytes = field(repr=False)
    link_host: str = "127.0.0.1"
    link_port: int = 0
    link_advertise: str = ""
    presence_ttl_s: float = DEFAULT_TTL_S
    fallback_poll_s: float = 0.5
    safety_poll_s: float = 5.0
    drain_timeout_s: float = 30.0
    drain_grace_s: float = 2.0
    handback_s: float = 5.0


class _Relay:
    """Answers one relayed connection on the node link."""

    __slots__ = ("nonce", "server")

    def __init__(self, server: LinkServer, nonce: str) -> None:
        self.server = server
        self.nonce = nonce

    def opened(self, transport: asyncio.Transport) -> None:
        self.server.answer(transport, self.nonce, None)

    def failed(self, transport: asyncio.Transport, reason: str) -> None:
        self.server.answer(transport, self.nonce, reason)


class ClusterNode:
    """See the module docstring.

    Lives with a gateway like its other parts: :meth:`attach` before the
    gateway starts, :meth:`start` after it listens, :meth:`stop_accepting`
    (the drain) first on shutdown, :meth:`close` last.
    """

    def __init__(self, source: DatabaseStageSource, settings: ClusterSettings) -> None:
        self._gateway: Gateway | None = None
        self.source = source
        self.settings = settings
        self.bus = Bus(settings.nats, f"qanat-gateway {settings.node}")
        self.follower = ControlFollower(
            self.bus,
            source,
            fallback_poll_s=settings.fallback_poll_s,
            safety_poll_s=settings.safety_poll_s,
        )
        self.presence = Presence(
            self.bus, settings.node, on_change=self._wake_sync, ttl_s=settings.presence_ttl_s
        )
        self.link = LinkServer(settings.secret, self._relay)
        self.link_address = ""
        self.draining = False
        self._remote: dict[tuple[str, int, str, str], RemoteTunnel] = {}
        self._sync_wanted = asyncio.Event()
        self._udp_links = itertools.count(1)
        self._tasks = TaskOwner("cluster node")
        #: App connections (TCP) other nodes relayed to this node's connectors.
        self.relayed_in = 0
        #: Per other node: channels opened / failed on its remote members
        #: that have been dropped since (live members count their own).
        self._retired: dict[str, list[int]] = {}

    @property
    def gateway(self) -> Gateway:
        assert self._gateway is not None, "ClusterNode.attach(gateway) first"
        return self._gateway

    def attach(self, gateway: Gateway) -> None:
        """Before the gateway starts: hear its tunnels, add the readiness check
        and the cluster's families to ``/metrics``."""
        self._gateway = gateway
        gateway.tunnel_listeners.append(self)
        gateway.health.add_check("cluster", self._ready)
        gateway.metric_sources.append(self.families)

    def families(self) -> list[Family]:
        """This node's part of ``/metrics`` (see docs/operations.md)."""
        nats = Family("qanat_cluster_nats_connected", "1 while NATS is connected, else 0.")
        nats.add((), 1.0 if self.bus.up else 0.0)
        draining = Family("qanat_cluster_draining", "1 once this node drains (SIGTERM).")
        draining.add((), 1.0 if self.draining else 0.0)
        ports = Family(
            "qanat_cluster_remote_ports",
            "Ports this node serves through another node's connectors, by that node.",
            labels=("node",),
        )
        out = Family(
            "qanat_cluster_relayed_out",
            "App connections carried to another node over the node link, by that node.",
            "counter",
            ("node",),
        )
        failed = Family(
            "qanat_cluster_relayed_out_failed",
            "Opens over the node link that the other node refused or did not answer.",
            "counter",
            ("node",),
        )
        held: dict[str, int] = {}
        totals = {node: list(counts) for node, counts in self._retired.items()}
        for tunnel in self._remote.values():
            held[tunnel.node] = held.get(tunnel.node, 0) + 1
            counts = totals.setdefault(tunnel.node, [0, 0])
            counts[0] += tunnel.channels_total
            counts[1] += tunnel.channels_failed
        for node, count in sorted(held.items()):
            ports.add((node,), count)
        for node, (total, fails) in sorted(totals.items()):
            out.add((node,), total)
            failed.add((node,), fails)
        relayed_in = Family(
            "qanat_cluster_relayed_in",
            "App connections other nodes relayed to this node's connectors.",
            "counter",
        )
        relayed_in.add((), self.relayed_in)
        refused = Family(
            "qanat_cluster_link_refused",
            "Node link connections refused (bad signature, replay, malformed, silent).",
            "counter",
        )
        refused.add((), self.link.refused)
        return [nats, draining, ports, out, failed, relayed_in, refused]

    async def stop_accepting(self) -> None:
        """First step of the shutdown: drain (see :meth:`drain`)."""
        await self.drain()

    async def start(self, gateway: Gateway | None = None) -> None:
        """Listen on the node link, join NATS (in the background), follow everything.

        Raises:
            OSError: the node link address cannot be bound.
            ConfigError: it is a wildcard address and nothing else is advertised.
        """
        if gateway is not None and self._gateway is None:
            self.attach(gateway)
        s = self.settings
        host, port = await self.link.listen(s.link_host, s.link_port)
        advertise = s.link_advertise or f"{host}:{port}"
        if advertise.rpartition(":")[0] in ("0.0.0.0", "::", "[::]", ""):
            self.link.close()
            raise ConfigError(
                f"--node-link {host}:{port} is a wildcard address; other nodes need a "
                "routable one: add --node-link-advertise <this node's address>:<port>"
            )
        self.link_address = advertise
        self.presence.link = advertise
        if advertise.startswith(("127.", "[::1]", "::1", "localhost")):
            log.warning(
                "node link %s is a loopback address: only nodes on this host can reach it; "
                "set --node-link (and --node-link-advertise) to this node's private address",
                advertise,
            )
        self.source.subscribe(self._stage_event)
        await self.follower.start()
        await self.presence.start()
        await self.bus.start()
        self._tasks.spawn(self._sync_forever(), name="cluster-sync")
        log.info(
            "cluster node %s: NATS %s, node link on %s:%d (advertised %s)",
            s.node,
            s.nats.display,
            host,
            port,
            advertise,
        )

    async def close(self) -> None:
        """Leave the cluster now (withdrawing presence), without draining."""
        if self._gateway is not None and self in self._gateway.tunnel_listeners:
            self._gateway.tunnel_listeners.remove(self)
        self.link.close()
        await self.presence.close(withdraw=True)
        await self._tasks.close(timeout_s=2.0)
        for key in list(self._remote):
            self._drop(key)
        await self.bus.close()

    async def _ready(self) -> str | None:
        if self.draining:
            return (
                f"node {self.settings.node} is draining (SIGTERM): send new connections elsewhere"
            )
        return None

    # -- presence out ----------------------------------------------------------

    def tunnel_active(self, tunnel: Tunnel) -> None:
        self._publish_local()

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        self._publish_local()

    def _publish_local(self) -> None:
        holdings = []
        for endpoint in self.gateway.ports.open.values():
            local = [m for m in endpoint.pool.members if not is_remote(m)]
            if not local:
                continue
            tunnel = cast("Tunnel", local[0].tunnel)
            remote = next(
                (
                    r
                    for r in tunnel.remotes
                    if r.local_port == str(endpoint.port)
                    and ("udp" if r.remote_proto == "udp" else "tcp") == endpoint.proto
                ),
                None,
            )
            if remote is None:
                continue
            holdings.append(
                Holding(
                    node=self.settings.node,
                    link=self.link_address,
                    stage=endpoint.stage_key,
                    port=endpoint.port,
                    remote=str(remote),
                    connectors=len(local),
                    draining=self.draining or all(m.tunnel.draining for m in local),
                )
            )
        self.presence.set_local(holdings)

    # -- presence in -----------------------------------------------------------

    def _wake_sync(self) -> None:
        self._sync_wanted.set()

    def _stage_event(self, event: StageEvent) -> None:
        if not event.stage.active:
            for key in [k for k in self._remote if k[0] == event.stage.key]:
                self._drop(key)
        self._sync_wanted.set()

    def _stage_by_key(self) -> dict[str, StageConfig]:
        return {s.key: s for s in self.source.stages() if s.active}

    async def _sync_forever(self) -> None:
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            try:
                await self._sync()
            except Exception:
                log.exception("cluster: applying presence failed")

    async def _sync(self) -> None:
        stages = self._stage_by_key()
        wanted: dict[tuple[str, int, str, str], Holding] = {}
        for holding in self.presence.remote():
            if holding.stage in stages:
                wanted[(holding.stage, holding.port, holding.proto, holding.node)] = holding
        for key in [k for k in self._remote if k not in wanted]:
            self._drop(key)
        for key, holding in wanted.items():
            member = self._remote.get(key)
            if member is not None:
                member.draining = holding.draining
                if member.link != holding.link_address:
                    self._drop(key)
                else:
                    continue
            await self._join(stages[holding.stage], holding)

    async def _join(self, stage: StageConfig, holding: Holding) -> None:
        try:
            remote = decode_remote(holding.remote)
        except Exception:
            log.warning("node %s announced an unreadable remote %r", holding.node, holding.remote)
            return
        dialer = LinkDialer(
            self.settings.secret,
            self.settings.node,
            holding.link_address,
            stage.key,
            holding.port,
            kind=remote.remote_proto,
        )
        tunnel = RemoteTunnel(holding.node, holding.link_address, dialer)
        tunnel.draining = holding.draining
        tunnel.ports = []  # type: ignore[attr-defined]
        problem = await self.gateway.ports.join_remote(stage, remote, tunnel)
        if problem is not None:
            log.warning(
                "stage %s: connectors of node %s for port %d not used here: %s",
                stage.key,
                holding.node,
                holding.port,
                problem,
            )
            return
        self._remote[(stage.key, holding.port, holding.proto, holding.node)] = tunnel
        log.info(
            "stage %s: port %d also served by node %s (%d connector(s))",
            stage.key,
            holding.port,
            holding.node,
            holding.connectors,
        )

    def _drop(self, key: tuple[str, int, str, str]) -> None:
        tunnel = self._remote.pop(key, None)
        if tunnel is not None:
            counts = self._retired.setdefault(tunnel.node, [0, 0])
            counts[0] += tunnel.channels_total
            counts[1] += tunnel.channels_failed
            tunnel.closed = True
            tunnel.tasks.cancel()
            self.gateway.ports.unbind(tunnel)  # type: ignore[arg-type]

    # -- the node link, serving side -------------------------------------------

    def _serving_port(
        self,
        request: linkwire.LinkRequest,
        transport: asyncio.Transport,
        kind: type[_PortT],
        protocol: Literal["tcp", "udp"],
    ) -> _PortT | None:
        """The port a relayed request is for, if a connector of this node serves it.

        Otherwise the request is answered with the reason and None returned;
        a relayed request is never passed on to a third node.
        """
        stage = self._stage_by_key().get(request.stage)
        found = (
            None
            if stage is None
            else self.gateway.ports.open.get((stage.bind_host, request.port, protocol))
        )
        if (
            not isinstance(found, kind)
            or found.stage_key != request.stage
            or not any(not is_remote(m) for m in found.pool.members)
        ):
            suffix = "/udp" if protocol == "udp" else ""
            reason = (
                f"node {self.settings.node} has no connector for "
                f"{request.stage}:{request.port}{suffix}"
            )
            self.link.answer(transport, request.nonce, reason)
            return None
        return found

    def _relay(
        self, request: linkwire.LinkRequest, transport: asyncio.Transport, rest: bytes
    ) -> None:
        if request.kind == "udp":
            self._relay_udp(request, transport, rest)
            return
        endpoint = self._serving_port(request, transport, TcpPort, "tcp")
        if endpoint is None:
            return
        self.relayed_in += 1
        app = AppConnection(endpoint, relay=_Relay(self.link, request.nonce))
        transport.set_protocol(app)
        app.connection_made(transport)
        if rest:
            app.early.append(rest)

    def _relay_udp(
        self, request: linkwire.LinkRequest, transport: asyncio.Transport, rest: bytes
    ) -> None:
        endpoint = self._serving_port(request, transport, UdpPort, "udp")
        if endpoint is None:
            return
        self.link.answer(transport, request.nonce, None)
        flows = RelayedFlows(endpoint, f"{request.node}#{next(self._udp_links)}")
        transport.set_protocol(flows)
        flows.connection_made(transport)
        if rest:
            flows.data_received(rest)

    # -- drain -------------------------------------------------------------------

    def open_connections(self) -> int:
        return sum(
            e.open_connections for e in self.gateway.ports.open.values() if isinstance(e, TcpPort)
        )

    async def drain(self) -> None:
        """SIGTERM: leave without failing an app connection or cutting an open one.

        1. tell the other nodes this node is draining (their pools try it last)
           and the balancer (``/readyz`` answers 503); keep serving for
           ``drain_grace_s`` so that the balancer stops sending first (closing a
           listener resets the connections still in its backlog);
        2. stop taking connectors (front door closed) and app connections
           (endpoint listeners closed: a balancer retries on another node);
           relayed connections from other nodes are still served;
        3. hand the connectors back one at a time: mark the tunnel draining (new
           connections go to the others), wait until its connections have
           finished, close it (the connector reconnects through the balancer
           to another node), wait (at most ``handback_s``) until another node
           serves its ports, next;
        4. wait for the app connections this node carries to other nodes;
        5. withdraw presence and leave NATS (:meth:`close`).

        Steps 3 and 4 end at ``drain_timeout_s`` after the start; what is still
        open then is cut, and the log says how many.
        """
        s = self.settings
        started = time.monotonic()
        deadline = started + s.drain_timeout_s
        self.draining = True
        self._publish_local()
        log.info(
            "node %s draining: /readyz answers 503; listeners close in %gs",
            s.node,
            s.drain_grace_s,
        )
        await asyncio.sleep(s.drain_grace_s)
        gateway = self.gateway
        if gateway.server is not None:
            gateway.server.close()
        for endpoint in gateway.ports.open.values():
            endpoint.close()  # the listener only; the pool keeps serving the link
        log.info(
            "draining node %s: %d open app connection(s), %d tunnel(s)",
            s.node,
            self.open_connections(),
            len(gateway.tunnels),
        )
        for tunnel in sorted(gateway.tunnels.values(), key=lambda t: len(t.splices)):
            if not tunnel.serving:
                continue
            tunnel.draining = True
            # Polled: opens in flight and spliced connections of this tunnel.
            while self._carried(tunnel) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            ports = [int(r.local_port) for r in tunnel.remotes if r.remote_proto != "udp"]
            tunnel.close(f"gateway node {s.node} draining: connect to another node")
            until = min(deadline, time.monotonic() + s.handback_s)
            key = tunnel.stage.key
            while time.monotonic() < until and not self._served_elsewhere(key, ports):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        while self.open_connections() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        log.info(
            "node %s drained in %.1fs (%d app connection(s) still open at the deadline)",
            s.node,
            time.monotonic() - started,
            self.open_connections(),
        )

    @staticmethod
    def _carried(tunnel: Tunnel) -> int:
        pending = sum(
            len(m.pending) for e in tunnel.ports for m in e.pool.members if m.tunnel is tunnel
        )
        return len(tunnel.splices) + pending

    def _served_elsewhere(self, stage: str, ports: list[int]) -> bool:
        live = {(h.stage, h.port) for h in self.presence.remote() if not h.draining}
        return all((stage, p) in live for p in ports)

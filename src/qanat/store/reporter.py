"""The gateway's live connectors, reported to the portal's database.

:class:`GatewayReporter` listens to a :class:`~qanat.gateway.server.Gateway`
(``tunnel_active`` / ``tunnel_closed``) and writes what it hears through a
:class:`~qanat.store.live.ConnectorRegistry`. The gateway's hooks run in the
event loop and must not block, so they only queue an event; one owned task
drains the queue in order and runs each database call in a worker thread.
Every ``refresh_s`` the keepalive round-trips of active tunnels are written
too (and a tunnel whose row is missing, because the database was away when it
connected, is reported again), and so are the traffic counters' deltas since
the last refresh (:mod:`qanat.store.traffic`), into per-minute buckets.

Database failures are logged (once per outage) and never reach the data
plane: a connector is served whether or not the portal can show it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from qanat.errors import PortalError, StoreError
from qanat.runtime import TaskOwner
from qanat.store.live import ConnectorRegistry, ConnectorReport
from qanat.store.records import EndpointRecord
from qanat.store.traffic import TrafficMeter

if TYPE_CHECKING:
    from qanat.gateway.server import Gateway
    from qanat.gateway.tunnel import Tunnel
    from qanat.store.database import Store

log = logging.getLogger("qanat.store.reporter")

DEFAULT_REFRESH_S = 5.0


def connector_id(tunnel: Tunnel, node: str) -> str:
    """A tunnel's name in the status: the connector's ``--id`` (or the identity the
    gateway derived for a stock connector), then node and tunnel number."""
    return f"{tunnel.identity or tunnel.info.client_id or 'connector'}@{node}#{tunnel.id}"


def connector_report(tunnel: Tunnel, node: str) -> ConnectorReport:
    """What the portal shows of one active tunnel."""
    endpoints = []
    for remote in tunnel.remotes:
        try:
            port = int(remote.local_port)
        except ValueError:
            continue
        protocol = "udp" if remote.remote_proto == "udp" else "tcp"
        endpoints.append(EndpointRecord(port=port, target=remote.target, protocol=protocol))
    version = tunnel.version or tunnel.info.user_agent or "unknown"
    return ConnectorReport(
        connector_id=connector_id(tunnel, node),
        version=version[:64],
        source_address=tunnel.info.peer,
        connected_since=datetime.fromtimestamp(tunnel.connected_at, UTC),
        endpoints=tuple(endpoints),
        name=connector_name(tunnel),
    )


def connector_name(tunnel: Tunnel) -> str:
    """The connector's own name: its ``--id`` (or the identity the gateway derived)."""
    return str(getattr(tunnel, "identity", "") or tunnel.info.client_id or "connector")


class GatewayReporter:
    """Keeps the ``connectors`` table in step with one gateway node.

    Args:
        registry: the node's writer of the live connector table.
        node: the node's name (the same as the registry's).
        refresh_s: how often keepalive round-trips are written.
    """

    def __init__(
        self, registry: ConnectorRegistry, node: str, *, refresh_s: float = DEFAULT_REFRESH_S
    ) -> None:
        self._registry = registry
        self._node = node
        self._refresh_s = refresh_s
        self._queue: asyncio.Queue[Callable[[], object]] = asyncio.Queue()
        self._reported: dict[int, tuple[str, str]] = {}  # tunnel id -> (address id, connector id)
        self._tasks = TaskOwner("connector reporter")
        self._gateway: Gateway | None = None
        self._failing = False
        self._meter = TrafficMeter(node)

    def attach(self, gateway: Gateway) -> None:
        """Listen to ``gateway``'s tunnels."""
        self._gateway = gateway
        gateway.tunnel_listeners.append(self)

    async def start(self) -> None:
        """Forget rows a previous run of this node left, then start writing.

        Raises:
            StoreError: the database cannot be written at all.
        """
        removed = await asyncio.to_thread(self._registry.reset)
        if removed:
            log.info(
                "removed %d connector(s) left by an earlier run of node %s", removed, self._node
            )
        self._tasks.spawn(self._drain(), name="connector-reporter")
        self._tasks.spawn(self._refresh(), name="connector-refresh")

    async def close(self) -> None:
        """Stop, and remove this node's rows (its tunnels end with it)."""
        if self._gateway is not None and self in self._gateway.tunnel_listeners:
            self._gateway.tunnel_listeners.remove(self)
        await self._tasks.close(timeout_s=2.0)
        try:
            await asyncio.to_thread(self._registry.reset)
        except StoreError as exc:
            log.warning("could not clear this node's connectors on shutdown: %s", exc)

    # -- TunnelListener ---------------------------------------------------------

    def tunnel_active(self, tunnel: Tunnel) -> None:
        report = connector_report(tunnel, self._node)
        address_id = tunnel.stage.address_id
        self._reported[tunnel.id] = (address_id, report.connector_id)
        self._queue.put_nowait(lambda: self._registry.connected(address_id, report))

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        final = self._meter.closed(tunnel.stage.key, tunnel.snapshot())
        if final:
            self._queue.put_nowait(lambda: self._registry.add_traffic(final))
        reported = self._reported.pop(tunnel.id, None)
        if reported is not None:
            address_id, cid = reported
            self._queue.put_nowait(lambda: self._registry.disconnected(address_id, cid))

    # -- tasks ------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            call = await self._queue.get()
            try:
                await asyncio.to_thread(call)
            except (StoreError, PortalError) as exc:
                if not self._failing:
                    log.warning("live connector report not written: %s", exc)
                    self._failing = True
                continue
            if self._failing:
                log.warning("live connector reports are written again")
                self._failing = False

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            gateway = self._gateway
            if gateway is None:
                continue
            for tunnel in list(gateway.tunnels.values()):
                if tunnel.id not in self._reported:
                    continue
                address_id, cid = self._reported[tunnel.id]
                rtt_ms = None if tunnel.last_rtt_s is None else round(tunnel.last_rtt_s * 1e3, 3)
                report = connector_report(tunnel, self._node)
                self._queue.put_nowait(self._touch_call(address_id, cid, rtt_ms, report))
            samples = self._meter.sample(gateway.status())
            if samples:
                self._queue.put_nowait(functools.partial(self._registry.add_traffic, samples))

    def _touch_call(
        self, address_id: str, cid: str, rtt_ms: float | None, report: ConnectorReport
    ) -> Callable[[], object]:
        def call() -> None:
            if not self._registry.keepalive(address_id, cid, rtt_ms):
                self._registry.connected(address_id, report)
                if rtt_ms is not None:
                    self._registry.keepalive(address_id, cid, rtt_ms)

        return call


class DatabasePart:
    """What a gateway with a database behind it adds (``qanat up``, ``--database-url``):
    the live connector report and a ``database`` check in ``/readyz``.

    A :class:`~qanat.gateway.serve.GatewayPart`.
    """

    def __init__(
        self,
        store: Store,
        node: str,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        readiness: bool = True,
    ) -> None:
        self.store = store
        self.reporter = GatewayReporter(ConnectorRegistry(store, node), node, refresh_s=refresh_s)
        # A cluster node passes False: it serves from its last view while the
        # database is away, and a balancer following /readyz must not take
        # every node out at once during a database restart (docs/cluster.md).
        self.readiness = readiness

    def attach(self, gateway: Gateway) -> None:
        self.reporter.attach(gateway)
        if self.readiness:
            gateway.add_check("database", self._check)

    async def _check(self) -> str | None:
        try:
            await asyncio.to_thread(self.store.stage_revision)
        except StoreError as exc:
            return f"database {self.store.display_url}: {exc}"
        return None

    async def start(self, gateway: Gateway) -> None:
        await self.reporter.start()

    async def stop_accepting(self) -> None:
        return None

    async def close(self) -> None:
        await self.reporter.close()

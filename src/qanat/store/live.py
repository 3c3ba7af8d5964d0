"""What gateway nodes report about live connectors, written to the store.

The portal's status reads this table; it is not configuration and is not in
the audit log (a keepalive every 25 s per connector would drown it). Each
gateway node writes under its own ``node`` name and calls :meth:`reset` when
it starts, so that rows left by a crash of that node disappear.

The methods block on the database: call them from a worker thread
(``asyncio.to_thread``) in the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from qanat.errors import NotFound
from qanat.store.database import Store, Transaction
from qanat.store.records import EndpointRecord, GatewayRecord, TrafficSample, utc_now

#: How long per-minute traffic is kept (the portal shows the last hour).
TRAFFIC_KEEP = timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class ConnectorReport:
    """A connector tunnel that was just admitted by a gateway node."""

    connector_id: str
    version: str
    source_address: str
    connected_since: datetime
    endpoints: Sequence[EndpointRecord] = field(default_factory=tuple)
    #: The connector's own name (``--id``, or derived by the gateway).
    name: str = ""


class ConnectorRegistry:
    """One gateway node's writer of the live connector table.

    Args:
        store: the portal's database.
        node: this node's stable name (host name, or pod name).
        clock: returns the current aware UTC time.
    """

    def __init__(self, store: Store, node: str, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._node = node
        self._clock = clock

    def reset(self) -> int:
        """Forget every connector this node reported before; return how many."""
        with self._store.transaction() as tx:
            return tx.remove_node_connectors(self._node)

    def connected(self, address_id: str, report: ConnectorReport) -> None:
        """Record (or refresh) a connector of the stage at ``address_id``.

        Raises:
            NotFound: no gateway has that address.
        """
        with self._store.transaction() as tx:
            gateway = _gateway(tx, address_id)
            tx.upsert_connector(
                gateway.stage_id,
                connector_id=report.connector_id,
                node=self._node,
                version=report.version,
                source_address=report.source_address,
                connected_since=report.connected_since,
                now=self._clock(),
                endpoints=report.endpoints,
                name=report.name,
            )

    def keepalive(self, address_id: str, connector_id: str, rtt_ms: float | None) -> bool:
        """Note a keepalive answer; False if the connector is not recorded."""
        with self._store.transaction() as tx:
            gateway = _gateway(tx, address_id)
            return tx.touch_connector(
                gateway.stage_id, connector_id, rtt_ms=rtt_ms, now=self._clock()
            )

    def add_traffic(self, samples: Sequence[TrafficSample]) -> int:
        """Add traffic deltas to the current minute; drop buckets past the retention."""
        if not samples:
            return 0
        with self._store.transaction() as tx:
            return tx.add_traffic(samples, now=self._clock(), keep=TRAFFIC_KEEP)

    def disconnected(self, address_id: str, connector_id: str) -> bool:
        """Remove a connector whose tunnel closed; False if it was not there."""
        with self._store.transaction() as tx:
            gateway = tx.gateway_by_address(address_id)
            return gateway is not None and tx.remove_connector(gateway.stage_id, connector_id)


def _gateway(tx: Transaction, address_id: str) -> GatewayRecord:
    gateway = tx.gateway_by_address(address_id)
    if gateway is None:
        raise NotFound(f"no stage has the address id {address_id!r}; was it removed?")
    return gateway

"""Connectors reported live by gateway nodes, as the portal's status shows them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from qanat.errors import NotFound
from qanat.portal import Actor, Portal
from qanat.store import ConnectorRegistry, ConnectorReport, EndpointRecord, Store
from support.store import FakeClock

SRC = "127.0.0.1"


def test_status_lists_connectors_and_endpoints(
    store: Store, portal: Portal, operator: Actor, acme: str, clock: FakeClock
) -> None:
    address_id = portal.activate(operator, SRC, acme, "Test").address.rsplit("/", 1)[1]
    node = ConnectorRegistry(store, "gw-1", clock=clock)
    since = clock.now
    node.connected(
        address_id,
        ConnectorReport(
            "conn-a",
            "qanat/0.1.0",
            "127.0.0.10",
            since,
            (EndpointRecord(8081, "10.0.0.5:8393"), EndpointRecord(8082, "smtp.internal:587")),
        ),
    )
    clock.advance(seconds=1)
    node.connected(
        address_id,
        ConnectorReport(
            "conn-b", "1.9.1", "127.0.0.11", clock.now, (EndpointRecord(8081, "10.0.0.6:8393"),)
        ),
    )
    clock.advance(seconds=25)
    assert node.keepalive(address_id, "conn-a", rtt_ms=12.5)
    assert not node.keepalive(address_id, "gone", rtt_ms=1.0)

    status = portal.status(operator, acme, "Test")
    a, b = status.connectors
    assert (a.connector_id, a.version, a.source_address, a.node) == (
        "conn-a",
        "qanat/0.1.0",
        "127.0.0.10",
        "gw-1",
    )
    assert a.connected_since == since
    assert a.last_seen_at == clock.now
    assert a.last_rtt_ms == 12.5
    assert b.last_rtt_ms is None
    assert [(e.name, e.connectors, e.targets) for e in status.endpoints] == [
        ("secure-gateway:8081", ("conn-a", "conn-b"), ("10.0.0.5:8393", "10.0.0.6:8393")),
        ("secure-gateway:8082", ("conn-a",), ("smtp.internal:587",)),
    ]
    # Other stages do not see them.
    assert portal.status(operator, acme, "Production").connectors == ()

    assert node.disconnected(address_id, "conn-b")
    assert not node.disconnected(address_id, "conn-b")
    assert [c.connector_id for c in portal.status(operator, acme, "Test").connectors] == ["conn-a"]


def test_node_restart_forgets_its_connectors(
    store: Store, portal: Portal, operator: Actor, acme: str, clock: FakeClock
) -> None:
    address_id = portal.activate(operator, SRC, acme, "Test").address.rsplit("/", 1)[1]
    one, two = ConnectorRegistry(store, "gw-1", clock=clock), ConnectorRegistry(store, "gw-2")
    for node, name in ((one, "a"), (two, "b")):
        node.connected(address_id, ConnectorReport(name, "1", SRC, clock.now - timedelta(1)))
    assert one.reset() == 1
    assert [c.node for c in portal.status(operator, acme, "Test").connectors] == ["gw-2"]


def test_report_for_unknown_address(store: Store, clock: FakeClock) -> None:
    node = ConnectorRegistry(store, "gw-1", clock=clock)
    missing = "sg_00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFound, match=missing):
        node.connected(missing, ConnectorReport("a", "1", SRC, clock.now))
    assert not node.disconnected(missing, "a")

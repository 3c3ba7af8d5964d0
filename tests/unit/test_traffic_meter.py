"""Traffic deltas from the gateway's cumulative counters (pure)."""

from __future__ import annotations

from typing import Any

from qanat.store.traffic import TrafficMeter


def _status(conns: int, bytes_: int, ep_conns: int, udp_packets: int = 0) -> dict[str, Any]:
    return {
        "stages": {
            "acme/Dev": {
                "connectors": [
                    {
                        "tunnel": 3,
                        "identity": "orders-1",
                        "connections_total": conns,
                        "connections_failed": 1,
                        "bytes_to_endpoint": bytes_,
                        "bytes_to_app": bytes_,
                    }
                ],
                "endpoints": [
                    {
                        "endpoint": "secure-gateway:8081",
                        "port": 8081,
                        "connections_total": ep_conns,
                        "connections_failed": 0,
                        "bytes_total": 10 * ep_conns,
                    },
                    {
                        "endpoint": "secure-gateway:5353/udp",
                        "packets_in": udp_packets,
                        "packets_out": udp_packets,
                        "dropped": 0,
                    },
                ],
            }
        }
    }


def test_deltas_between_samples_and_nothing_for_idle() -> None:
    meter = TrafficMeter("gw-1")
    first = {(s.kind, s.name): s for s in meter.sample(_status(5, 100, 5, 2))}
    assert first["connector", "orders-1"].connections == 5
    assert first["connector", "orders-1"].bytes == 200
    assert first["connector", "orders-1"].detail == "tunnel 3 on gw-1"
    assert first["endpoint", "8081"].bytes == 50
    assert (first["endpoint", "5353"].protocol, first["endpoint", "5353"].connections) == ("udp", 4)
    second = {(s.kind, s.name): s for s in meter.sample(_status(7, 150, 7, 2))}
    assert second["connector", "orders-1"].connections == 2
    assert second["connector", "orders-1"].failures == 0
    assert second["connector", "orders-1"].bytes == 100
    assert ("endpoint", "5353") not in second  # idle: not written
    assert meter.sample(_status(7, 150, 7, 2)) == []


def test_a_counter_that_went_down_starts_again() -> None:
    meter = TrafficMeter("gw-1")
    meter.sample(_status(5, 100, 5))
    again = {(s.kind, s.name): s for s in meter.sample(_status(5, 100, 2))}
    assert again["endpoint", "8081"].connections == 2


def test_a_closed_tunnel_gives_its_last_delta_once() -> None:
    meter = TrafficMeter("gw-1")
    meter.sample(_status(5, 100, 5))
    snap = _status(6, 120, 6)["stages"]["acme/Dev"]["connectors"][0]
    [last] = meter.closed("acme/Dev", snap)
    assert (last.connections, last.bytes) == (1, 40)

"""Traffic deltas from the gateway's cumulative counters (pure)."""

from __future__ import annotations

from qanat.gateway.status import (
    GatewayStatus,
    PortStatus,
    StageStatus,
    TunnelStatus,
    UdpStatus,
)
from qanat.store.traffic import TrafficMeter


def _tunnel(conns: int, bytes_: int) -> TunnelStatus:
    return TunnelStatus(
        tunnel=3,
        connector="orders-1",
        session="123456789",
        peer="127.0.0.1:1",
        user_agent="",
        version="",
        state="active",
        draining=False,
        missed_keepalives=0,
        connected_since=0.0,
        keepalive_rtt_ms=None,
        ports=(8081,),
        open_connections=0,
        connections_total=conns,
        connections_failed=1,
        bytes_to_endpoint=bytes_,
        bytes_to_app=bytes_,
    )


def _endpoint(port: int, conns: int, bytes_: int, udp: UdpStatus | None) -> PortStatus:
    return PortStatus(
        endpoint=f"secure-gateway:{port}" + ("/udp" if udp else ""),
        proto="udp" if udp else "tcp",
        port=port,
        bind=f"127.0.0.1:{port}",
        target="10.0.0.1:80",
        tunnels=(3,),
        pool=(),
        open_connections=0,
        connections_total=conns,
        connections_failed=0,
        connections_retried=0,
        refused_sources=0,
        recent_failures=(),
        bytes_total=bytes_,
        udp=udp,
    )


def _status(conns: int, bytes_: int, ep_conns: int, udp_packets: int = 0) -> GatewayStatus:
    stage = StageStatus(
        connectors=(_tunnel(conns, bytes_),),
        endpoints=(
            _endpoint(8081, ep_conns, 10 * ep_conns, None),
            _endpoint(5353, 0, 0, UdpStatus(0, udp_packets, udp_packets, 0)),
        ),
    )
    return GatewayStatus(
        stages={"acme/Dev": stage},
        known_stages=(),
        fingerprint="",
        balance="round_robin",
        keepalive_s=0,
        dead_peer_bound_s=None,
        flapping=(),
    )


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
    snap = _status(6, 120, 6).stages["acme/Dev"].connectors[0]
    [last] = meter.closed("acme/Dev", snap)
    assert (last.connections, last.bytes) == (1, 40)

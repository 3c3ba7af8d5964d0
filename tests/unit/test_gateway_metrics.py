"""Gateway metrics come from typed status snapshots (issue 12, bug 2).

Every exported number is read by attribute from frozen dataclasses, so a
field renamed in ``gateway/status.py`` fails here (and in mypy) instead of
exporting zeros; and a UDP endpoint's ``8053/udp`` never reaches ``int()``.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from qanat.gateway.metrics import gateway_families
from qanat.gateway.status import (
    GatewayStatus,
    PortStatus,
    StageInfo,
    StageStatus,
    TunnelStatus,
    UdpStatus,
)
from qanat.telemetry.counters import Exposition


def endpoint(port: int, base: int, udp: UdpStatus | None = None) -> PortStatus:
    return PortStatus(
        endpoint=f"secure-gateway:{port}",
        proto="udp" if udp else "tcp",
        port=port,
        bind=f"127.0.0.1:{port}",
        target="10.0.0.5:80",
        tunnels=(1, 2),
        pool=(),
        open_connections=base + 1,
        connections_total=base + 2,
        connections_failed=base + 3,
        connections_retried=base + 4,
        refused_sources=base + 5,
        recent_failures=(),
        bytes_total=base + 6,
        udp=udp,
    )


TUNNEL = TunnelStatus(
    tunnel=7,
    connector="warehouse-1",
    session="123456789",
    peer="192.0.2.1:4000",
    user_agent="qanat/0.1.0",
    version="qanat-0.1.0",
    state="active",
    draining=False,
    missed_keepalives=0,
    connected_since=1.0,
    keepalive_rtt_ms=12.5,
    ports=(8081, 8053),
    open_connections=3,
    connections_total=31,
    connections_failed=2,
    bytes_to_endpoint=1001,
    bytes_to_app=2002,
)

STATUS = GatewayStatus(
    stages={
        "acme/dev": StageStatus(
            connectors=(TUNNEL,),
            endpoints=(
                endpoint(8081, 100),
                endpoint(8053, 200, UdpStatus(flows=17, packets_in=19, packets_out=23, dropped=29)),
            ),
        )
    },
    known_stages=(StageInfo("acme/dev", True), StageInfo("acme/test", False)),
    fingerprint="x",
    balance="round_robin",
    keepalive_s=25.0,
    dead_peer_bound_s=80.0,
    flapping=(),
    retired_bytes={("acme/dev", "to_endpoint"): 5},
)


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = Exposition(lambda: gateway_families(STATUS, "9.9.9")).render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(name: str, **labels: str) -> float:
    return samples()[(name, tuple(sorted(labels.items())))]


def test_every_endpoint_field_is_exported_with_its_own_value() -> None:
    tcp = {"stage": "acme/dev", "port": "8081"}
    udp = {"stage": "acme/dev", "port": "8053/udp"}
    assert value("qanat_gateway_endpoint_tunnels", **tcp) == 2
    assert value("qanat_gateway_app_connections_open", **tcp) == 101
    assert value("qanat_gateway_app_connections_total", **tcp) == 102
    assert value("qanat_gateway_app_connections_failed_total", **tcp) == 103
    assert value("qanat_gateway_app_connections_refused_total", **tcp) == 105
    assert value("qanat_gateway_app_connections_refused_total", **udp) == 205
    assert value("qanat_gateway_udp_flows", **udp) == 17
    assert value("qanat_gateway_udp_datagrams_total", direction="to_endpoint", **udp) == 19
    assert value("qanat_gateway_udp_datagrams_total", direction="to_app", **udp) == 23
    assert value("qanat_gateway_udp_datagrams_dropped_total", **udp) == 29


def test_tunnels_stages_and_bytes() -> None:
    assert value("qanat_build_info", version="9.9.9", role="gateway") == 1
    assert value("qanat_gateway_stage_active", stage="acme/dev") == 1
    assert value("qanat_gateway_stage_active", stage="acme/test") == 0
    assert value("qanat_gateway_tunnels", stage="acme/dev", state="active") == 1
    assert value("qanat_gateway_tunnels", stage="acme/test", state="active") == 0
    assert value("qanat_gateway_connectors", stage="acme/dev") == 1
    rtt = value(
        "qanat_gateway_keepalive_rtt_seconds", stage="acme/dev", connector="warehouse-1", tunnel="7"
    )
    assert rtt == 0.0125
    assert value("qanat_gateway_bytes_total", stage="acme/dev", direction="to_endpoint") == 1006
    assert value("qanat_gateway_bytes_total", stage="acme/dev", direction="to_app") == 2002

"""The gateway's metrics, built at scrape time from one typed :class:`GatewayStatus`.

Every value is read by attribute from the frozen snapshot, so a field
renamed in ``status.py`` breaks mypy and ``tests/ops/test_ops_metrics.py``
instead of exporting zeros. Labels: ``stage``, ``port`` (``8081``, or
``8053/udp`` for a UDP endpoint, since both may exist), ``state``,
``direction``; only the per-tunnel keepalive gauge names a connector (by the
``--id`` its operator chose), and it exists only while that tunnel does.
Counters read from an endpoint or a tunnel reset when that object is
recreated; ``rate()`` copes. Bytes per stage add the totals of closed
tunnels, so they never go down.

Directions: ``to_endpoint`` is app -> private endpoint, ``to_app`` the answer.
"""

from __future__ import annotations

from qanat.gateway.status import GatewayStatus, StageStatus
from qanat.telemetry.counters import Family, build_info


def gateway_families(status: GatewayStatus, version: str) -> list[Family]:
    """Every gateway metric family for one scrape."""
    active = Family(
        "qanat_gateway_stage_active",
        "1 when the stage's private gateway is active, 0 when inactive.",
        labels=("stage",),
    )
    for info in status.known_stages:
        active.add((info.key,), 1 if info.active else 0)
    # Every known stage shows its tunnels, even when it has none.
    stages: dict[str, StageStatus] = {
        **{info.key: StageStatus() for info in status.known_stages},
        **status.stages,
    }
    tunnels = Family(
        "qanat_gateway_tunnels", "Connector tunnels by state.", labels=("stage", "state")
    )
    connectors = Family(
        "qanat_gateway_connectors",
        "Connectors with an active tunnel (distinct connector ids).",
        labels=("stage",),
    )
    rtt = Family(
        "qanat_gateway_keepalive_rtt_seconds",
        "Last keepalive round trip of each active tunnel.",
        labels=("stage", "connector", "tunnel"),
    )
    traffic = Family(
        "qanat_gateway_bytes",
        "Bytes carried between apps and endpoints, by direction.",
        kind="counter",
        labels=("stage", "direction"),
    )
    live_bytes = dict(status.retired_bytes)
    for stage_key, entry in stages.items():
        states = {"setup": 0, "active": 0}
        ids: set[str] = set()
        for conn in entry.connectors:
            states[conn.state] = states.get(conn.state, 0) + 1
            if conn.state == "active":
                ids.add(conn.connector or f"tunnel-{conn.tunnel}")
            if conn.keepalive_rtt_ms is not None:
                rtt.add((stage_key, conn.connector, str(conn.tunnel)), conn.keepalive_rtt_ms / 1e3)
            for direction, value in (
                ("to_endpoint", conn.bytes_to_endpoint),
                ("to_app", conn.bytes_to_app),
            ):
                key = (stage_key, direction)
                live_bytes[key] = live_bytes.get(key, 0) + value
        for state, count in states.items():
            tunnels.add((stage_key, state), count)
        connectors.add((stage_key,), len(ids))
    for (stage_key, direction), value in sorted(live_bytes.items()):
        traffic.add((stage_key, direction), value)
    return [
        build_info(version, "gateway"),
        active,
        tunnels,
        connectors,
        rtt,
        traffic,
        *_endpoint_families(stages),
    ]


def _endpoint_families(stages: dict[str, StageStatus]) -> list[Family]:
    labels = ("stage", "port")
    pool = Family(
        "qanat_gateway_endpoint_tunnels",
        "Tunnels serving each endpoint (secure-gateway:<port>).",
        labels=labels,
    )
    open_ = Family("qanat_gateway_app_connections_open", "App connections open now.", labels=labels)
    total = Family("qanat_gateway_app_connections", "App connections accepted.", "counter", labels)
    failed = Family(
        "qanat_gateway_app_connections_failed",
        "App connections closed because no connector could open the channel.",
        "counter",
        labels,
    )
    refused = Family(
        "qanat_gateway_app_connections_refused",
        "App connections (or UDP datagrams) refused because the source is not in the "
        "stage allowlist.",
        "counter",
        labels,
    )
    udp_flows = Family(
        "qanat_gateway_udp_flows", "UDP flows (app source addresses) open now.", labels=labels
    )
    udp_packets = Family(
        "qanat_gateway_udp_datagrams",
        "UDP datagrams carried, by direction.",
        "counter",
        ("stage", "port", "direction"),
    )
    udp_dropped = Family(
        "qanat_gateway_udp_datagrams_dropped",
        "UDP datagrams dropped (too large, too many flows, no tunnel, full window).",
        "counter",
        labels,
    )
    for stage_key, entry in stages.items():
        for ep in entry.endpoints:
            values = (stage_key, ep.port_label)
            pool.add(values, len(ep.tunnels))
            open_.add(values, ep.open_connections)
            total.add(values, ep.connections_total)
            failed.add(values, ep.connections_failed)
            refused.add(values, ep.refused_sources)
            if ep.udp is not None:
                udp_flows.add(values, ep.udp.flows)
                udp_packets.add((*values, "to_endpoint"), ep.udp.packets_in)
                udp_packets.add((*values, "to_app"), ep.udp.packets_out)
                udp_dropped.add(values, ep.udp.dropped)
    return [pool, open_, total, failed, refused, udp_flows, udp_packets, udp_dropped]

"""Prometheus metrics of the gateway and the connector. The only importer of prometheus_client.

Most numbers already exist as counters on live objects (tunnels, endpoints,
the connector's statistics), so they are read at scrape time by a custom
collector and the data path pays nothing for them. Only what happens and is
then gone is counted where it happens, by one call into this module:

- :func:`token_failure` (front door), :func:`dead_peer_removed` (tunnel
  keepalive) and :func:`channel_opened` (endpoint, the latency histogram).

Names follow the Prometheus conventions: ``qanat_`` prefix, ``_total`` on
counters, base units in the name (``_seconds``, ``_bytes``). Labels are
``stage``, ``port``, ``state``, ``direction`` and ``reason``, all bounded by
configuration; only the per-tunnel keepalive gauge names a connector, and it
exists only while that tunnel does. Counters read from an endpoint or a
tunnel reset when that object is recreated; ``rate()`` copes. Bytes per
stage add the totals of closed tunnels, so they never go down.

Directions: ``to_endpoint`` is app -> private endpoint, ``to_app`` the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from qanat import __version__

if TYPE_CHECKING:
    from qanat.connector.runner import Connector
    from qanat.gateway.server import Gateway
    from qanat.gateway.tunnel import Tunnel

# `<name>_created` series double every counter and nobody graphs them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: Token failure reasons (bounded label values; all exported from zero).
TOKEN_FAILURE_REASONS = ("bad", "missing", "renewed", "inactive", "rate_limited")
#: Channel-open latency buckets: loopback is ~1 ms, a connector abroad ~100 ms,
#: the gateway gives up on one connector after channel_open_timeout_s (5 s).
CHANNEL_OPEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

#: Event metrics of this process (the gateway's; a connector has none).
EVENTS = CollectorRegistry(auto_describe=True)

_TOKEN_FAILURES = prometheus_client.Counter(
    "qanat_gateway_token_failures",
    "Tunnel requests refused at the token check, by reason.",
    ["reason"],
    registry=EVENTS,
)
_DEAD_PEERS = prometheus_client.Counter(
    "qanat_gateway_dead_peer_removals",
    "Tunnels closed because their connector missed too many keepalives.",
    ["stage"],
    registry=EVENTS,
)
_CHANNEL_OPEN = prometheus_client.Histogram(
    "qanat_gateway_channel_open_seconds",
    "Time from accepting an app connection to an open channel on a connector "
    "(including tries on other connectors of the pool).",
    ["stage", "port"],
    buckets=CHANNEL_OPEN_BUCKETS_S,
    registry=EVENTS,
)
for _reason in TOKEN_FAILURE_REASONS:
    _TOKEN_FAILURES.labels(_reason)


# -- events (one call each, from the data path) ---------------------------------


def token_failure(reason: str) -> None:
    """A tunnel request was refused at the token check (see TOKEN_FAILURE_REASONS)."""
    _TOKEN_FAILURES.labels(reason if reason in TOKEN_FAILURE_REASONS else "bad").inc()


def dead_peer_removed(stage: str) -> None:
    """A tunnel of ``stage`` was closed for missed keepalives."""
    _DEAD_PEERS.labels(stage).inc()


def channel_opened(stage: str, port: int, seconds: float) -> None:
    """An app connection on ``stage``/``port`` got its channel after ``seconds``."""
    _CHANNEL_OPEN.labels(stage, str(port)).observe(seconds)


# -- exposition ----------------------------------------------------------------


class Union(Collector):
    """Several collectors shown as one (the process's, the events, one owner's)."""

    def __init__(self, parts: Sequence[Collector]) -> None:
        self.parts = tuple(parts)

    def collect(self) -> Iterable[Metric]:
        for part in self.parts:
            yield from part.collect()


def render(collector: Collector, accept: str = "") -> tuple[bytes, str]:
    """The scrape body and its content type, negotiated from ``Accept``."""
    encoder, content_type = choose_encoder(accept)
    return encoder(collector), content_type


def _build_info(role: str) -> GaugeMetricFamily:
    info = GaugeMetricFamily(
        "qanat_build_info", "qanat version and role of this process.", labels=["version", "role"]
    )
    info.add_metric([__version__, role], 1)
    return info


# -- gateway -------------------------------------------------------------------


class GatewayMetrics(Collector):
    """Reads one gateway's status at scrape time; keeps byte totals of closed tunnels."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: (stage, direction) -> bytes carried by tunnels that have closed.
        self.retired_bytes: dict[tuple[str, str], int] = {}
        self.exposition = Union([prometheus_client.REGISTRY, EVENTS, self])

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        """Keep the bytes of a closed tunnel so the stage's counter never goes down."""
        stage = tunnel.stage.key
        for direction, value in (("to_endpoint", tunnel.bytes_up), ("to_app", tunnel.bytes_down)):
            if value:
                key = (stage, direction)
                self.retired_bytes[key] = self.retired_bytes.get(key, 0) + value

    def collect(self) -> Iterable[Metric]:
        status = self.gateway.status()
        stages: dict[str, Any] = status["stages"]
        yield _build_info("gateway")

        active = GaugeMetricFamily(
            "qanat_gateway_stage_active",
            "1 when the stage's private gateway is active, 0 when inactive.",
            labels=["stage"],
        )
        known = self.gateway.stages.stages()
        for stage in known:
            active.add_metric([stage.key], 1 if stage.active else 0)
        yield active
        # Every known stage shows its tunnels, even when it has none.
        stages = {**{s.key: {"connectors": [], "endpoints": []} for s in known}, **stages}

        tunnels = GaugeMetricFamily(
            "qanat_gateway_tunnels", "Connector tunnels by state.", labels=["stage", "state"]
        )
        connectors = GaugeMetricFamily(
            "qanat_gateway_connectors",
            "Connectors with an active tunnel (distinct connector ids).",
            labels=["stage"],
        )
        rtt = GaugeMetricFamily(
            "qanat_gateway_keepalive_rtt_seconds",
            "Last keepalive round trip of each active tunnel.",
            labels=["stage", "connector", "tunnel"],
        )
        traffic = CounterMetricFamily(
            "qanat_gateway_bytes",
            "Bytes carried between apps and endpoints, by direction.",
            labels=["stage", "direction"],
        )
        live_bytes: dict[tuple[str, str], int] = dict(self.retired_bytes)
        for stage_key, entry in stages.items():
            states = {"setup": 0, "active": 0}
            ids: set[str] = set()
            for conn in entry["connectors"]:
                state = str(conn["state"])
                states[state] = states.get(state, 0) + 1
                if state == "active":
                    ids.add(str(conn["connector"] or f"tunnel-{conn['tunnel']}"))
                if conn.get("keepalive_rtt_ms") is not None:
                    rtt.add_metric(
                        [stage_key, str(conn["connector"]), str(conn["tunnel"])],
                        float(conn["keepalive_rtt_ms"]) / 1e3,
                    )
                for direction in ("to_endpoint", "to_app"):
                    key = (stage_key, direction)
                    live_bytes[key] = live_bytes.get(key, 0) + int(
                        conn.get(f"bytes_{direction}", 0)
                    )
            for state, count in states.items():
                tunnels.add_metric([stage_key, state], count)
            connectors.add_metric([stage_key], len(ids))
        for (stage_key, direction), value in sorted(live_bytes.items()):
            traffic.add_metric([stage_key, direction], value)
        yield tunnels
        yield connectors
        yield rtt
        yield traffic
        yield from self._endpoints(stages)

    def _endpoints(self, stages: dict[str, Any]) -> Iterable[Metric]:
        labels = ["stage", "port"]
        pool = GaugeMetricFamily(
            "qanat_gateway_endpoint_tunnels",
            "Tunnels serving each endpoint (secure-gateway:<port>).",
            labels=labels,
        )
        open_ = GaugeMetricFamily(
            "qanat_gateway_app_connections_open", "App connections open now.", labels=labels
        )
        total = CounterMetricFamily(
            "qanat_gateway_app_connections", "App connections accepted.", labels=labels
        )
        failed = CounterMetricFamily(
            "qanat_gateway_app_connections_failed",
            "App connections closed because no connector could open the channel.",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "qanat_gateway_app_connections_refused",
            "App connections refused because the source is not in the stage allowlist.",
            labels=labels,
        )
        for stage_key, entry in stages.items():
            for ep in entry["endpoints"]:
                values = [stage_key, str(_endpoint_port(ep))]
                pool.add_metric(values, len(ep.get("tunnels", ())))
                open_.add_metric(values, int(ep.get("open_connections", 0)))
                total.add_metric(values, int(ep.get("connections_total", 0)))
                failed.add_metric(values, int(ep.get("connections_failed", 0)))
                refused.add_metric(values, int(ep.get("refused_sources", 0)))
        yield from (pool, open_, total, failed, refused)


def _endpoint_port(snapshot: dict[str, Any]) -> int:
    if "port" in snapshot:
        return int(snapshot["port"])
    return int(str(snapshot.get("endpoint", ":0")).rsplit(":", 1)[1])


# -- connector -------------------------------------------------------------------


class ConnectorMetrics(Collector):
    """Reads a running connector's statistics at scrape time."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.exposition = Union([prometheus_client.REGISTRY, self])

    def collect(self) -> Iterable[Metric]:
        stats = self.connector.stats
        session = self.connector.session
        splices = list(session.splices) if session is not None else []
        yield _build_info("connector")
        connected = stats.connected_since is not None
        yield GaugeMetricFamily(
            "qanat_connector_up", "1 while the tunnel to the gateway is up.", value=int(connected)
        )
        if connected:
            yield GaugeMetricFamily(
                "qanat_connector_connected_since_seconds",
                "Unix time the current tunnel was established.",
                value=float(stats.connected_since or 0.0),
            )
        yield CounterMetricFamily(
            "qanat_connector_connect_attempts", "Tunnel attempts.", value=stats.attempts
        )
        yield CounterMetricFamily(
            "qanat_connector_sessions", "Tunnels established.", value=stats.sessions
        )
        yield CounterMetricFamily(
            "qanat_connector_reconnects",
            "Attempts after the first one (after a failure or a lost tunnel).",
            value=max(0, stats.attempts - 1),
        )
        yield GaugeMetricFamily(
            "qanat_connector_channels_open", "Channels being carried now.", value=len(splices)
        )
        yield CounterMetricFamily(
            "qanat_connector_channels", "Channels the gateway opened.", value=stats.channels_total
        )
        yield CounterMetricFamily(
            "qanat_connector_channels_refused",
            "Channels refused because the endpoint could not be dialled.",
            value=stats.channels_refused,
        )
        traffic = CounterMetricFamily(
            "qanat_connector_bytes",
            "Bytes carried between endpoints and the gateway, by direction.",
            labels=["direction"],
        )
        # On this side a splice's TCP end is the endpoint: what it sends goes to the app.
        traffic.add_metric(["to_app"], stats.bytes_up + sum(s.sent for s in splices))
        traffic.add_metric(["to_endpoint"], stats.bytes_down + sum(s.received for s in splices))
        yield traffic
        if stats.last_rtt_s is not None:
            yield GaugeMetricFamily(
                "qanat_connector_keepalive_rtt_seconds",
                "Last keepalive round trip to the gateway.",
                value=stats.last_rtt_s,
            )

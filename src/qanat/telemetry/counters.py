"""Prometheus exposition and event counters. The only importer of prometheus_client.

Most numbers already exist as counters on live objects (tunnels, endpoints,
the connector's statistics), so the component that owns them turns a typed
snapshot of itself into :class:`Family` values at scrape time (its
collector lives next to it: ``gateway/metrics.py``, ``connector/metrics.py``)
and the data path pays nothing. Only what happens and is then gone is
counted where it happens, through :class:`GatewayEvents`: token failures
(front door), dead peers (tunnel keepalive) and the channel-open latency
histogram (endpoint).

This module imports nothing of qanat: what it shows is handed to it.

Names follow the Prometheus conventions: ``qanat_`` prefix, ``_total`` on
counters (added by the exposition), base units in the name (``_seconds``,
``_bytes``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

# `<name>_created` series double every counter and nobody graphs them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

#: Token failure reasons (bounded label values; all exported from zero).
TOKEN_FAILURE_REASONS = ("bad", "missing", "renewed", "inactive", "rate_limited")
#: Channel-open latency buckets: loopback is ~1 ms, a connector abroad ~100 ms,
#: the gateway gives up on one connector after channel_open_timeout_s (5 s).
CHANNEL_OPEN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class Family:
    """One metric family as a collector builds it: name, help, kind, labelled values."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, labels: Sequence[str], value: float) -> None:
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name}: labels {self.labels} given {tuple(labels)}")
        self.samples.append((tuple(labels), float(value)))

    def metric(self) -> Metric:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        if not self.labels:
            value = self.samples[0][1] if self.samples else 0.0
            return cls(self.name, self.help, value=value)
        out = cls(self.name, self.help, labels=list(self.labels))
        for labels, value in self.samples:
            out.add_metric(list(labels), value)
        return out


def build_info(version: str, role: str) -> Family:
    info = Family(
        "qanat_build_info", "qanat version and role of this process.", labels=("version", "role")
    )
    info.add((version, role), 1)
    return info


class _Collect(Collector):
    def __init__(self, collect: Callable[[], Iterable[Family]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        for family in self._collect():
            yield family.metric()


class GatewayEvents:
    """What happens and is gone: counted where it happens (one registry per gateway)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._token_failures = prometheus_client.Counter(
            "qanat_gateway_token_failures",
            "Tunnel requests refused at the token check, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._dead_peers = prometheus_client.Counter(
            "qanat_gateway_dead_peer_removals",
            "Tunnels closed because their connector missed too many keepalives.",
            ["stage"],
            registry=self.registry,
        )
        self._channel_open = prometheus_client.Histogram(
            "qanat_gateway_channel_open_seconds",
            "Time from accepting an app connection to an open channel on a connector "
            "(including tries on other connectors of the pool).",
            ["stage", "port"],
            buckets=CHANNEL_OPEN_BUCKETS_S,
            registry=self.registry,
        )
        self._hedged = prometheus_client.Counter(
            "qanat_gateway_channel_hedges",
            "App connections for which a second connector was asked because the first "
            "had not answered within the hedge bound, by which one won.",
            ["stage", "port", "winner"],
            registry=self.registry,
        )
        for reason in TOKEN_FAILURE_REASONS:
            self._token_failures.labels(reason)

    def token_failure(self, reason: str) -> None:
        """A tunnel request was refused at the token check (see TOKEN_FAILURE_REASONS)."""
        self._token_failures.labels(reason if reason in TOKEN_FAILURE_REASONS else "bad").inc()

    def dead_peer_removed(self, stage: str) -> None:
        """A tunnel of ``stage`` was closed for missed keepalives."""
        self._dead_peers.labels(stage).inc()

    def channel_opened(self, stage: str, port: str, seconds: float) -> None:
        """An app connection on ``stage``/``port`` got its channel after ``seconds``."""
        self._channel_open.labels(stage, port).observe(seconds)

    def hedged(self, stage: str, port: str, winner: Literal["first", "second"]) -> None:
        """A second channel was opened for one app connection; ``winner`` answered first."""
        self._hedged.labels(stage, port, winner).inc()


class Exposition:
    """What one process serves on ``/metrics``: process metrics, events, its collector."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Family]],
        events: GatewayEvents | None = None,
    ) -> None:
        parts: list[Collector] = [prometheus_client.REGISTRY]
        if events is not None:
            parts.append(events.registry)
        parts.append(_Collect(collect))
        self._parts = tuple(parts)
        self._union = _Union(self._parts)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from ``Accept``.

        Raises:
            Exception: whatever a collector raises (the HTTP layer answers 500).
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self._union), content_type


class _Union(Collector):
    def __init__(self, parts: Sequence[Collector]) -> None:
        self.parts = tuple(parts)

    def collect(self) -> Iterable[Metric]:
        for part in self.parts:
            yield from part.collect()

"""What the gateway reports about itself: frozen, typed snapshots.

:meth:`~qanat.gateway.server.Gateway.status` builds a :class:`GatewayStatus`
from the live objects; the metrics collector (``gateway/metrics.py``), the
SIGUSR2 status line and ``qanat gateway status`` readers all read these
fields by attribute, so a renamed field is a type error (and a failing
test), never a metric that silently exports zeros. :func:`to_json` gives the
JSON shape logged on SIGUSR2 (field names unchanged since issue 4).

Names: a *connector* is the process on the private side (shown by the
``--id`` its operator chose, else the identity the gateway derived); a
*tunnel* is one session of it (``tunnel`` number, ``session`` the random
per-process id chisel sends as ``?id=``). A :class:`PortStatus` is one
port ``secure-gateway:<port>`` of a stage (listed under ``endpoints`` in the
JSON and named ``endpoint`` in the metrics, the names dashboards know); its
``target`` is the endpoint, the private address the connector dials.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Proto = Literal["tcp", "udp"]


@dataclass(frozen=True, slots=True)
class FailureStatus:
    """One recent app connection an endpoint could not carry."""

    at: float
    kind: str  # "channel" (no connector could open it) or "allowlist"
    source: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One tunnel in one endpoint's pool."""

    tunnel: int
    connector: str
    target: str
    health: str
    open_connections: int
    connections_total: int
    opens_failed: int
    failures_in_row: int
    cooling_for_s: float
    last_error: str


@dataclass(frozen=True, slots=True)
class UdpStatus:
    """What only a UDP endpoint counts."""

    flows: int
    packets_in: int
    packets_out: int
    dropped: int


@dataclass(frozen=True, slots=True)
class PortStatus:
    """One ``secure-gateway:<port>`` (TCP or UDP) of one stage."""

    endpoint: str
    proto: Proto
    port: int
    bind: str
    target: str
    tunnels: tuple[int, ...]
    pool: tuple[MemberStatus, ...]
    open_connections: int
    connections_total: int
    connections_failed: int
    connections_retried: int
    refused_sources: int
    recent_failures: tuple[FailureStatus, ...]
    #: Bytes (both directions) of the app connections that have finished.
    bytes_total: int = 0
    udp: UdpStatus | None = None

    @property
    def port_label(self) -> str:
        """The ``port`` metric label: ``8081``, or ``8053/udp`` (both may exist)."""
        return str(self.port) if self.proto == "tcp" else f"{self.port}/udp"


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """One connector session."""

    tunnel: int
    connector: str  # the --id (or derived identity): what operators name
    session: str  # the per-process id chisel sends (?id=...)
    peer: str
    user_agent: str
    version: str
    state: str
    draining: bool
    missed_keepalives: int
    connected_since: float
    keepalive_rtt_ms: float | None
    ports: tuple[int, ...]
    open_connections: int
    connections_total: int
    connections_failed: int
    bytes_to_endpoint: int
    bytes_to_app: int


@dataclass(frozen=True, slots=True)
class StageStatus:
    connectors: tuple[TunnelStatus, ...] = ()
    endpoints: tuple[PortStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class FlapStatus:
    connector: str
    source: str
    strikes: int
    backed_off_for_s: float
    refused_upgrades: int


@dataclass(frozen=True, slots=True)
class StageInfo:
    """A stage the source knows, whether or not anything is connected."""

    key: str
    active: bool


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    stages: dict[str, StageStatus]
    known_stages: tuple[StageInfo, ...]
    fingerprint: str
    balance: str
    keepalive_s: float
    dead_peer_bound_s: float | None
    flapping: tuple[FlapStatus, ...]
    retired_bytes: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)


def to_json(status: GatewayStatus) -> dict[str, object]:
    """The JSON document of the SIGUSR2 status line."""
    doc = dataclasses.asdict(status)
    doc.pop("retired_bytes")
    doc["known_stages"] = [s.key for s in status.known_stages]
    for stage in doc["stages"].values():
        for endpoint in stage["endpoints"]:
            if endpoint["udp"] is None:
                del endpoint["udp"]
    return doc

"""What the store hands out: plain frozen values, never ORM objects.

Callers (the portal service, the database stage source) never see a
SQLAlchemy session or a lazily loaded attribute; a record is a snapshot taken
inside the transaction that read it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utc_now() -> datetime:
    """The default clock of the store and the portal: aware UTC time."""
    return datetime.now(UTC)


class GatewayState(enum.StrEnum):
    """A stage's private gateway is either refusing or accepting connectors."""

    INACTIVE = "inactive"
    ACTIVE = "active"


class Role(enum.StrEnum):
    """A user's (or API key's) role in one organisation."""

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """viewer < operator < admin: each role may do what the ones below may."""
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class PrivateGatewaySettings:
    """Where a stage's private gateway listens and whom it lets in; defaults for new stages.

    (Not :class:`qanat.gateway.settings.GatewaySettings`, the gateway process's tuning.)
    """

    bind_host: str = "127.0.0.1"
    port_min: int = 1024
    port_max: int = 65535
    allow_cidrs: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class OrgRecord:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StageRecord:
    id: int
    org_id: int
    org_name: str
    name: str
    created_at: datetime

    @property
    def key(self) -> str:
        """The stage's stable key, ``<org>/<stage>``, as the gateway knows it."""
        return f"{self.org_name}/{self.name}"


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """A stage's private gateway, including the stored token hashes.

    The hashes stay inside the store and the data plane; the portal's status
    views are built without them.
    """

    id: int
    stage_id: int
    org_name: str
    stage_name: str
    state: GatewayState
    address_id: str | None
    token_hash: str | None
    renewed_hashes: tuple[str, ...]
    settings: PrivateGatewaySettings
    activated_at: datetime | None
    token_issued_at: datetime | None
    updated_at: datetime

    @property
    def key(self) -> str:
        return f"{self.org_name}/{self.stage_name}"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    created_at: datetime
    platform_admin: bool = False


@dataclass(frozen=True, slots=True)
class MembershipRecord:
    org_name: str
    username: str
    role: Role


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: int
    org_id: int
    org_name: str
    prefix: str
    key_hash: str
    name: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One endpoint a connector serves: ``secure-gateway:<port>`` -> target."""

    port: int
    target: str
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True)
class ConnectorRecord:
    """A connector tunnel as last reported by the gateway node that holds it."""

    stage_key: str
    connector_id: str
    node: str
    version: str
    source_address: str
    connected_since: datetime
    last_seen_at: datetime
    last_rtt_ms: float | None
    endpoints: tuple[EndpointRecord, ...]
    #: The connector's own name (its ``--id``); ``connector_id`` names the session.
    name: str = ""

    @property
    def display_name(self) -> str:
        return self.name or self.connector_id


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the append-only audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    org: str | None
    target: str
    source_address: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CatalogueRecord:
    """A stage's catalogue entry for ``secure-gateway:<port>``.

    Attributes:
        tls: the private side speaks TLS, so apps use ``https://``.
        openapi_doc: the OpenAPI document as uploaded (None: none, or only a link).
        openapi_format: ``json`` or ``yaml`` when there is a document.
    """

    stage_key: str
    port: int
    protocol: str
    tls: bool
    description: str
    owner: str
    openapi_url: str | None
    openapi_doc: str | None = field(repr=False)
    openapi_format: str | None
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class TrafficSample:
    """Counts of one endpoint or connector since the previous sample (deltas).

    Attributes:
        kind: ``endpoint`` (name is the port) or ``connector`` (name is its id).
        detail: for a connector, its session (``tunnel 3 on node gw-1``).
        connections: app connections (TCP) or datagrams (UDP).
    """

    stage_key: str
    kind: str
    name: str
    protocol: str
    connections: int
    failures: int
    bytes: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """One minute of one endpoint or connector of a stage."""

    bucket_at: datetime
    kind: str
    name: str
    detail: str
    protocol: str
    connections: int
    failures: int
    bytes: int


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which audit entries to read; empty fields match everything.

    Attributes:
        target: a stage key (``org/stage``): entries about that stage.
        actor: part of the actor's label (``user:alice``), any case.
        action: an action (``gateway.activate``) or its family (``gateway``).
        since, until: ``since <= at < until``.
    """

    target: str = ""
    actor: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None


#: The old name, for branches written before the rename (issue 12); use
#: PrivateGatewaySettings.
GatewaySettings = PrivateGatewaySettings

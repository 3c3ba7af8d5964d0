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
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Where a gateway listens and whom it lets in; defaults for new stages."""

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
    settings: GatewaySettings
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

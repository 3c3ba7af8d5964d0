"""What the portal's operations return: frozen values without secrets.

A token or API key appears in exactly two places, :class:`Activation` (first
activation) and :class:`IssuedToken` / :class:`NewApiKey` (renewal, key
creation), and never in a ``repr``. Stored hashes are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from qanat.store import (
    ConnectorRecord,
    GatewayState,
    MembershipRecord,
    PrivateGatewaySettings,
    Role,
)


@dataclass(frozen=True, slots=True)
class OrgInfo:
    name: str
    created_at: datetime
    stages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StageInfo:
    """A stage and the state of its private gateway.

    Attributes:
        address: the connectors' address, None until the first activation.
        renewed_tokens: how many earlier tokens were replaced by renewals.
    """

    org: str
    name: str
    state: GatewayState
    address: str | None
    activated_at: datetime | None
    token_issued_at: datetime | None
    renewed_tokens: int
    settings: PrivateGatewaySettings
    updated_at: datetime

    @property
    def key(self) -> str:
        return f"{self.org}/{self.name}"


@dataclass(frozen=True, slots=True)
class Activation:
    """Result of activate: the token only on the very first activation."""

    stage: StageInfo
    address: str
    token: str | None = field(repr=False)
    first: bool
    changed: bool


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """Result of renew_token: the new token, shown once."""

    stage: StageInfo
    address: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One ``secure-gateway:<port>`` and the connectors serving it."""

    port: int
    connectors: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"secure-gateway:{self.port}"


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    stage: StageInfo
    connectors: tuple[ConnectorRecord, ...]
    endpoints: tuple[EndpointStatus, ...]


@dataclass(frozen=True, slots=True)
class UserInfo:
    username: str
    created_at: datetime
    memberships: tuple[MembershipRecord, ...]


class ApiKeyState(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as listed: its public name, never the key or its hash."""

    org: str
    name: str
    display: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    state: ApiKeyState


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """Result of create_api_key: the key, shown once."""

    info: ApiKeyInfo
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One endpoint of a stage as app developers see it.

    Attributes:
        listed: there is a catalogue entry (False: served, but nobody
            described it yet).
        served_by: names of the connectors serving the port right now.
        base_url: what to paste into an app (``https://secure-gateway:8081/``;
            ``secure-gateway:5353`` for UDP).
        document: ``json`` or ``yaml`` when an OpenAPI document is stored.
    """

    port: int
    protocol: str
    tls: bool
    description: str
    owner: str
    openapi_url: str | None
    document: str | None
    document_title: str
    listed: bool
    served_by: tuple[str, ...]
    targets: tuple[str, ...]
    updated_at: datetime | None
    updated_by: str

    @property
    def name(self) -> str:
        return f"secure-gateway:{self.port}"

    @property
    def base_url(self) -> str:
        if self.protocol == "udp":
            return f"secure-gateway:{self.port}"
        return f"{'https' if self.tls else 'http'}://secure-gateway:{self.port}/"


@dataclass(frozen=True, slots=True)
class StageCatalogue:
    stage: StageInfo
    entries: tuple[CatalogueEntry, ...]


@dataclass(frozen=True, slots=True)
class OpenApiFile:
    """A stored OpenAPI document, for download."""

    port: int
    format: str
    text: str = field(repr=False)

    @property
    def media_type(self) -> str:
        return "application/json" if self.format == "json" else "application/yaml"


@dataclass(frozen=True, slots=True)
class TrafficRow:
    """One endpoint or connector over the window.

    Attributes:
        name: the port (endpoints) or the connector's ``--id`` (connectors).
        detail: a connector's session(s), e.g. ``tunnel 3 on gw-1``.
        series: connections per minute, oldest first, one per minute of the window.
    """

    kind: str
    name: str
    detail: str
    protocol: str
    connections: int
    failures: int
    bytes: int
    series: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StageTraffic:
    stage_key: str
    minutes: int
    since: datetime
    endpoints: tuple[TrafficRow, ...]
    connectors: tuple[TrafficRow, ...]

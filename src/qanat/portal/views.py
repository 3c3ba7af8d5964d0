"""What the portal's operations return: frozen values without secrets.

A token or API key appears in exactly two places, :class:`Activation` (first
activation) and :class:`IssuedToken` / :class:`NewApiKey` (renewal, key
creation), and never in a ``repr``. Stored hashes are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from qanat.store import ConnectorRecord, GatewaySettings, GatewayState, MembershipRecord, Role


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
    settings: GatewaySettings
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

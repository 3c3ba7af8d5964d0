"""The schema as SQLAlchemy 2 declarative models.

These classes never leave ``qanat.store``: the transaction methods turn rows
into :mod:`qanat.store.records`. The Alembic migrations under
``migrations/versions`` create the same tables; a test compares the two.

Enumerations are stored as short strings with a CHECK constraint (portable,
and readable with a plain SQL client). Times are stored in UTC and always come
back timezone-aware, on SQLite too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Lengths shared with the validation in qanat.portal.names.
ORG_NAME_MAX = 63
STAGE_NAME_MAX = 64
USERNAME_MAX = 64
HASH_MAX = 255
ACTOR_MAX = 128
ADDRESS_MAX = 64
DESCRIPTION_MAX = 500
OWNER_MAX = 200
URL_MAX = 2000
TRAFFIC_NAME_MAX = 128
ROLE_CHECK = "role IN ('admin', 'operator', 'viewer')"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back timezone-aware.

    Raises:
        ValueError: on a naive datetime, which would be ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC time")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(ORG_NAME_MAX), unique=True)
    created_at: Mapped[datetime]


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("org_id", "name_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(STAGE_NAME_MAX))
    # Lower-cased name: "Test" and "test" are the same stage.
    name_key: Mapped[str] = mapped_column(String(STAGE_NAME_MAX))
    created_at: Mapped[datetime]


class Gateway(Base):
    """Exactly one per stage (unique stage_id), created with the stage."""

    __tablename__ = "gateways"
    __table_args__ = (
        CheckConstraint("state IN ('inactive', 'active')", name="state"),
        CheckConstraint(
            "1 <= port_min AND port_min <= port_max AND port_max <= 65535", name="ports"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    address_id: Mapped[str | None] = mapped_column(String(40), unique=True)
    token_hash: Mapped[str | None] = mapped_column(String(HASH_MAX))
    bind_host: Mapped[str] = mapped_column(String(ADDRESS_MAX))
    port_min: Mapped[int]
    port_max: Mapped[int]
    allow_cidrs: Mapped[list[str]] = mapped_column(JSON)
    activated_at: Mapped[datetime | None]
    token_issued_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class RenewedToken(Base):
    """Hashes of tokens replaced by a renewal, so the old token gets a clear no."""

    __tablename__ = "renewed_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    gateway_id: Mapped[int] = mapped_column(
        ForeignKey("gateways.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(HASH_MAX))
    renewed_at: Mapped[datetime]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(HASH_MAX))
    created_at: Mapped[datetime]
    # Platform role: may create organisations (see portal/access.py).
    platform_admin: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Browser sessions issued before this (epoch seconds) are refused.
    sessions_valid_after: Mapped[float | None] = mapped_column(Float)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint(ROLE_CHECK, name="role"),)

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[int] = mapped_column(
        ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(ROLE_CHECK, name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(HASH_MAX))
    name: Mapped[str] = mapped_column(String(STAGE_NAME_MAX))
    role: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(ACTOR_MAX))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Connector(Base):
    """A live connector tunnel, written by the gateway node that holds it."""

    __tablename__ = "connectors"
    __table_args__ = (UniqueConstraint("stage_id", "connector_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    connector_id: Mapped[str] = mapped_column(String(128))
    # The connector's own name (``--id``, or derived); connector_id is the session.
    name: Mapped[str] = mapped_column(String(128), server_default="")
    node: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    source_address: Mapped[str] = mapped_column(String(ADDRESS_MAX))
    connected_since: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    last_rtt_ms: Mapped[float | None] = mapped_column(Float)
    # [{"port": 8081, "target": "10.0.0.5:8393", "protocol": "tcp"}, ...]
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class EndpointEntry(Base):
    """The catalogue: what ``secure-gateway:<port>`` of a stage is, for app developers.

    Written by operators (or declared by a connector); independent of whether
    a connector serves the port right now.
    """

    __tablename__ = "endpoint_entries"
    __table_args__ = (
        UniqueConstraint("stage_id", "port"),
        CheckConstraint("protocol IN ('tcp', 'udp')", name="protocol"),
        CheckConstraint("1 <= port AND port <= 65535", name="port"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    port: Mapped[int]
    protocol: Mapped[str] = mapped_column(String(8))
    tls: Mapped[bool]
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX))
    owner: Mapped[str] = mapped_column(String(OWNER_MAX))
    openapi_url: Mapped[str | None] = mapped_column(String(URL_MAX))
    # The document exactly as uploaded, and "json" or "yaml".
    openapi_doc: Mapped[str | None] = mapped_column(Text)
    openapi_format: Mapped[str | None] = mapped_column(String(8))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(ACTOR_MAX))


class TrafficBucket(Base):
    """Traffic of one endpoint or connector of a stage in one minute.

    Gateway nodes add their deltas to the row of the current minute; rows
    older than the retention are deleted by the writer.
    """

    __tablename__ = "traffic_buckets"
    __table_args__ = (
        UniqueConstraint("stage_id", "bucket_at", "kind", "name"),
        CheckConstraint("kind IN ('endpoint', 'connector')", name="kind"),
        Index("ix_traffic_buckets_bucket_at", "bucket_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    bucket_at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(TRAFFIC_NAME_MAX))
    detail: Mapped[str] = mapped_column(String(TRAFFIC_NAME_MAX))
    protocol: Mapped[str] = mapped_column(String(8))
    connections: Mapped[int] = mapped_column(BigInteger)
    failures: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


class AuditEntry(Base):
    """Append-only: the migration adds triggers refusing UPDATE and DELETE.

    The organisation is kept by name, not by foreign key, so that the log
    outlives whatever it talks about.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_org_id", "org", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(ACTOR_MAX))
    action: Mapped[str] = mapped_column(String(64))
    org: Mapped[str | None] = mapped_column(String(ORG_NAME_MAX))
    target: Mapped[str] = mapped_column(String(255))
    source_address: Mapped[str] = mapped_column(String(ADDRESS_MAX))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class StageRevision(Base):
    """One row counting changes the gateways care about.

    Every transaction that changes a stage or gateway bumps it; a poller that
    finds the same number has nothing to reload, at the price of one tiny
    query.
    """

    __tablename__ = "stage_revision"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger)

"""The portal's storage: the only package that imports SQLAlchemy or Alembic.

How it works::

    engine.py       database URL (QANAT_DATABASE_URL or SQLite in the data
                    directory), per-back-end engine settings, and the
                    translation of driver errors into qanat.errors.StoreError
    models.py       the schema as SQLAlchemy 2 declarative models
    migrations/     Alembic revisions, run in code by migrate.upgrade(url) in
                    one transaction (no alembic.ini)
    records.py      the frozen values the store hands out (no ORM objects)
    database.py     Store: ``with store.transaction() as tx:`` gives a
                    Transaction whose methods (tenancy.py, identity.py,
                    activity.py, catalogue.py) read and write records; the block commits
                    whole or not at all
    stagesource.py  DatabaseStageSource: the gateway's StageSource, an
                    in-memory view refreshed by polling a change counter
    live.py         ConnectorRegistry: gateway nodes report live connectors
    reporter.py     GatewayReporter: a gateway's tunnel hooks -> ConnectorRegistry,
                    queued and written from a worker thread
    traffic.py      TrafficMeter: deltas of the gateway's counters (pure), which
                    the reporter adds to per-minute traffic buckets

Schema (one row per ...)::

    orgs            organisation (name unique)
    stages          stage of an org (name unique per org, ignoring case)
    gateways        THE private gateway of a stage (stage_id unique): state,
                    address id sg_<uuid>, current token hash, bind host,
                    port range, allowed app CIDRs
    renewed_tokens  hashes of tokens replaced by a renewal, per gateway
    users           login name and scrypt password hash
    memberships     role (admin | operator | viewer) of a user in an org
    api_keys        hash of an org-scoped key with a role, expiry, revocation
    connectors      live connector tunnels per stage, as gateways report them
    endpoint_entries  the catalogue: per stage and port, protocol, TLS,
                    description, owner, OpenAPI document or link
    traffic_buckets per stage, minute and endpoint/connector: connections,
                    failures, bytes (deltas added by gateway nodes, kept ~2 h)
    audit_log       append-only record of every change (triggers refuse
                    UPDATE and DELETE)
    stage_revision  a single counter bumped with every stage/gateway change

Business rules (who may do what, tokens, passwords) are not here: they live
in ``qanat.portal``, which talks to the store only through ``Transaction``.
"""

from qanat.store.database import Store, Transaction, open_store
from qanat.store.engine import (
    DATABASE_URL_ENV,
    StoreConfig,
    database_url,
    normalize_url,
    redact_url,
    sqlite_url,
)
from qanat.store.live import ConnectorRegistry, ConnectorReport
from qanat.store.migrate import head_revision, upgrade
from qanat.store.records import (
    ApiKeyRecord,
    AuditFilter,
    AuditRecord,
    CatalogueRecord,
    ConnectorRecord,
    EndpointRecord,
    GatewayRecord,
    GatewaySettings,  # the old name of PrivateGatewaySettings (branches in flight)
    GatewayState,
    MembershipRecord,
    OrgRecord,
    PrivateGatewaySettings,
    Role,
    StageRecord,
    TrafficRecord,
    TrafficSample,
    UserRecord,
    utc_now,
)
from qanat.store.stagesource import DatabaseStageSource, stage_config

__all__ = [
    "DATABASE_URL_ENV",
    "ApiKeyRecord",
    "AuditFilter",
    "AuditRecord",
    "CatalogueRecord",
    "ConnectorRecord",
    "ConnectorRegistry",
    "ConnectorReport",
    "DatabaseStageSource",
    "EndpointRecord",
    "GatewayRecord",
    "GatewaySettings",
    "GatewayState",
    "MembershipRecord",
    "OrgRecord",
    "PrivateGatewaySettings",
    "Role",
    "StageRecord",
    "Store",
    "StoreConfig",
    "TrafficRecord",
    "TrafficSample",
    "Transaction",
    "UserRecord",
    "database_url",
    "head_revision",
    "normalize_url",
    "open_store",
    "redact_url",
    "sqlite_url",
    "stage_config",
    "upgrade",
    "utc_now",
]

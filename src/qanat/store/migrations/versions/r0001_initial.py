"""Initial schema: organisations, stages, gateways, identity, connectors, audit.

Revision ID: r0001
Revises:
Create Date: 2024-11-23

Constraint names are spelled out (they follow the naming convention of
``qanat.store.models``) so that later revisions can refer to them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_ROLE_CHECK = "role IN ('admin', 'viewer')"


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_orgs"),
        sa.UniqueConstraint("name", name="uq_orgs_name"),
    )
    op.create_table(
        "stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("name_key", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stages"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name="fk_stages_org_id_orgs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("org_id", "name_key", name="uq_stages_org_id_name_key"),
    )
    op.create_table(
        "gateways",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("address_id", sa.String(40), nullable=True),
        sa.Column("token_hash", sa.String(255), nullable=True),
        sa.Column("bind_host", sa.String(64), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=False),
        sa.Column("port_max", sa.Integer(), nullable=False),
        sa.Column("allow_cidrs", sa.JSON(), nullable=False),
        sa.Column("activated_at", _TS, nullable=True),
        sa.Column("token_issued_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_gateways"),
        sa.ForeignKeyConstraint(
            ["stage_id"], ["stages.id"], name="fk_gateways_stage_id_stages", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("stage_id", name="uq_gateways_stage_id"),
        sa.UniqueConstraint("address_id", name="uq_gateways_address_id"),
        sa.CheckConstraint("state IN ('inactive', 'active')", name="ck_gateways_state"),
        sa.CheckConstraint(
            "1 <= port_min AND port_min <= port_max AND port_max <= 65535",
            name="ck_gateways_ports",
        ),
    )
    op.create_table(
        "renewed_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gateway_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(255), nullable=False),
        sa.Column("renewed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_renewed_tokens"),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["gateways.id"],
            name="fk_renewed_tokens_gateway_id_gateways",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_renewed_tokens_gateway_id", "renewed_tokens", ["gateway_id"])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "org_id", name="pk_memberships"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name="fk_memberships_org_id_orgs", ondelete="CASCADE"
        ),
        sa.CheckConstraint(_ROLE_CHECK, name="ck_memberships_role"),
    )
    op.create_index("ix_memberships_org_id", "memberships", ["org_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name="fk_api_keys_org_id_orgs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
        sa.CheckConstraint(_ROLE_CHECK, name="ck_api_keys_role"),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_table(
        "connectors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("connector_id", sa.String(128), nullable=False),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("connected_since", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("last_rtt_ms", sa.Float(), nullable=True),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_connectors"),
        sa.ForeignKeyConstraint(
            ["stage_id"], ["stages.id"], name="fk_connectors_stage_id_stages", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("stage_id", "connector_id", name="uq_connectors_stage_id_connector_id"),
    )
    op.create_index("ix_connectors_node", "connectors", ["node"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("org", sa.String(63), nullable=True),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_org_id", "audit_log", ["org", "id"])
    _make_audit_log_append_only()
    op.create_table(
        "stage_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stage_revision"),
        sa.CheckConstraint("id = 1", name="ck_stage_revision_single_row"),
    )
    op.execute("INSERT INTO stage_revision (id, value) VALUES (1, 0)")


def _make_audit_log_append_only() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log"
            " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
            " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{event.lower()} BEFORE {event} ON audit_log"
                " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )


def downgrade() -> None:
    for table in (
        "stage_revision",
        "audit_log",
        "connectors",
        "api_keys",
        "memberships",
        "users",
        "renewed_tokens",
        "gateways",
        "stages",
        "orgs",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_append_only()")

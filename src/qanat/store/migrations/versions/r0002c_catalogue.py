"""The endpoint catalogue, per-minute traffic, and the operator role.

Revision ID: r0002c
Revises: r0001
Create Date: 2026-12-01

The role CHECK constraints of ``memberships`` and ``api_keys`` gain
``operator``; SQLite cannot alter a constraint, so those two tables are
rebuilt (Alembic's batch mode copies the rows).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002c"
down_revision: str | None = "r0001"
branch_labels: str | None = None
depends_on: str | None = None

_TS = sa.DateTime(timezone=True)
_OLD_ROLES = "role IN ('admin', 'viewer')"
_NEW_ROLES = "role IN ('admin', 'operator', 'viewer')"


def _roles(check: str) -> None:
    for table in ("memberships", "api_keys"):
        with op.batch_alter_table(table, recreate="auto") as batch:
            batch.drop_constraint(f"ck_{table}_role", type_="check")
            batch.create_check_constraint(f"ck_{table}_role", check)


def upgrade() -> None:
    _roles(_NEW_ROLES)
    with op.batch_alter_table("connectors") as batch:
        batch.add_column(sa.Column("name", sa.String(128), server_default="", nullable=False))
    op.create_table(
        "endpoint_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("openapi_url", sa.String(2000), nullable=True),
        sa.Column("openapi_doc", sa.Text(), nullable=True),
        sa.Column("openapi_format", sa.String(8), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_endpoint_entries"),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["stages.id"],
            name="fk_endpoint_entries_stage_id_stages",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("stage_id", "port", name="uq_endpoint_entries_stage_id_port"),
        sa.CheckConstraint("protocol IN ('tcp', 'udp')", name="ck_endpoint_entries_protocol"),
        sa.CheckConstraint("1 <= port AND port <= 65535", name="ck_endpoint_entries_port"),
    )
    op.create_table(
        "traffic_buckets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("bucket_at", _TS, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("detail", sa.String(128), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("connections", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_traffic_buckets"),
        sa.ForeignKeyConstraint(
            ["stage_id"],
            ["stages.id"],
            name="fk_traffic_buckets_stage_id_stages",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "stage_id",
            "bucket_at",
            "kind",
            "name",
            name="uq_traffic_buckets_stage_id_bucket_at_kind_name",
        ),
        sa.CheckConstraint("kind IN ('endpoint', 'connector')", name="ck_traffic_buckets_kind"),
    )
    op.create_index("ix_traffic_buckets_bucket_at", "traffic_buckets", ["bucket_at"])


def downgrade() -> None:
    op.drop_table("traffic_buckets")
    op.drop_table("endpoint_entries")
    with op.batch_alter_table("connectors") as batch:
        batch.drop_column("name")
    op.execute("DELETE FROM memberships WHERE role = 'operator'")
    op.execute("DELETE FROM api_keys WHERE role = 'operator'")
    _roles(_OLD_ROLES)

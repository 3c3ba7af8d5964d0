"""Platform role (who may create organisations) and session revocation.

Revision ID: r0002s
Revises: r0001
Create Date: 2026-12-01

``users.platform_admin`` marks the installation's platform admins (the first
admin created by ``qanat up`` / ``qanat portal`` is one): only they, and the
operator on the server, create organisations. Existing databases make their
oldest user a platform admin, as that is the first admin.

``users.sessions_valid_after`` (epoch seconds): browser sessions issued
before it are refused (signing out and changing the password set it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002s"
down_revision: str | None = "r0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("platform_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("sessions_valid_after", sa.Float(), nullable=True))
    op.execute("UPDATE users SET platform_admin = TRUE WHERE id = (SELECT MIN(id) FROM users)")


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sessions_valid_after")
        batch.drop_column("platform_admin")

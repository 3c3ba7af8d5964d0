"""Platform role (who may create organisations) and session revocation.

Revision ID: r0002s
Revises: r0002c
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
down_revision: str | None = "r0002c"  # re-chained after the catalogue (issue15)
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, never a table rebuild: rebuilding ``users`` on SQLite
    # would drop it, and ON DELETE CASCADE would empty memberships and keys.
    op.add_column(
        "users",
        sa.Column("platform_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("users", sa.Column("sessions_valid_after", sa.Float(), nullable=True))
    op.execute("UPDATE users SET platform_admin = TRUE WHERE id = (SELECT MIN(id) FROM users)")


def downgrade() -> None:
    op.drop_column("users", "sessions_valid_after")
    op.drop_column("users", "platform_admin")

"""Projects, users and credentials admin; per-host join tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Batch mode: SQLite can only add and drop columns by copying the table.
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("description", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("credential") as batch:
        batch.add_column(sa.Column("description", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("quota") as batch:
        batch.add_column(sa.Column("volumes", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("gigabytes", sa.Integer(), nullable=True))
    with op.batch_alter_table("host") as batch:
        batch.add_column(sa.Column("agent_token", sa.String(), nullable=True))
    op.create_table(
        "jointoken",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("token_sha256", sa.String(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_jointoken_host_id", "jointoken", ["host_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jointoken_host_id", table_name="jointoken")
    op.drop_table("jointoken")
    with op.batch_alter_table("host") as batch:
        batch.drop_column("agent_token")
    with op.batch_alter_table("quota") as batch:
        batch.drop_column("gigabytes")
        batch.drop_column("volumes")
    with op.batch_alter_table("credential") as batch:
        batch.drop_column("description")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("description")

"""EVS snapshots; volumes from image or snapshot.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "snapshot",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("volume_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("availability_zone", sa.String(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=True),
        sa.Column("source_kind", sa.String(), nullable=True),
        sa.Column("source_id", sa.String(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_snapshot_created_at", "snapshot", ["created_at"], unique=False)
    op.create_index("ix_snapshot_host_id", "snapshot", ["host_id"], unique=False)
    op.create_index("ix_snapshot_name", "snapshot", ["name"], unique=False)
    op.create_index("ix_snapshot_project_id", "snapshot", ["project_id"], unique=False)
    op.create_index("ix_snapshot_status", "snapshot", ["status"], unique=False)
    op.create_index("ix_snapshot_volume_id", "snapshot", ["volume_id"], unique=False)
    op.add_column("volume", sa.Column("source_kind", sa.String(), nullable=True))
    op.add_column("volume", sa.Column("source_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volume") as batch:
        batch.drop_column("source_id")
        batch.drop_column("source_kind")
    for column in ("volume_id", "status", "project_id", "name", "host_id", "created_at"):
        op.drop_index(f"ix_snapshot_{column}", table_name="snapshot")
    op.drop_table("snapshot")

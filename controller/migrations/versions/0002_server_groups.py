"""Server groups (anti-affinity) and their members.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 05:58:08.169779
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "servergroup",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_servergroup_created_at", "servergroup", ["created_at"], unique=False)
    op.create_index("ix_servergroup_project_id", "servergroup", ["project_id"], unique=False)
    op.create_table(
        "servergroupmember",
        sa.Column("server_id", sa.String(), nullable=False),
        sa.Column("group_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("server_id"),
    )
    op.create_index("ix_servergroupmember_group_id", "servergroupmember", ["group_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_servergroupmember_group_id", table_name="servergroupmember")
    op.drop_table("servergroupmember")
    op.drop_index("ix_servergroup_project_id", table_name="servergroup")
    op.drop_index("ix_servergroup_created_at", table_name="servergroup")
    op.drop_table("servergroup")

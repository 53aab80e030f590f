"""View stamps: a per-project counter bumped by triggers on every write to what server views are made of.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from controller.models.view_stamp import create_triggers, drop_ddl

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "view_stamp",
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("project_id"),
    )
    create_triggers(op.get_bind())


def downgrade() -> None:
    bind = op.get_bind()
    for statement in drop_ddl(bind.dialect.name):
        bind.exec_driver_sql(statement)
    op.drop_table("view_stamp")

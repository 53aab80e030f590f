"""Elastic IPs and VPC SNAT.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "eip",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("public_ip_address", sa.String(), nullable=False),
        sa.Column("port_id", sa.String(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("alias", sa.String(), nullable=True),
        sa.Column("bandwidth_id", sa.String(), nullable=False),
        sa.Column("bandwidth_name", sa.String(), nullable=False),
        sa.Column("bandwidth_size", sa.Integer(), nullable=False),
        sa.Column("bandwidth_share_type", sa.String(), nullable=False),
        sa.Column("delete_on_termination", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("port_id"),
        sa.UniqueConstraint("public_ip_address"),
    )
    op.create_index(op.f("ix_eip_created_at"), "eip", ["created_at"], unique=False)
    op.create_index(op.f("ix_eip_project_id"), "eip", ["project_id"], unique=False)
    with op.batch_alter_table("vpc") as batch:
        batch.add_column(
            sa.Column("enable_shared_snat", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    with op.batch_alter_table("quota") as batch:
        batch.add_column(sa.Column("eips", sa.Integer(), nullable=True))
    with op.batch_alter_table("host") as batch:
        batch.add_column(sa.Column("external_ip", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("host") as batch:
        batch.drop_column("external_ip")
    with op.batch_alter_table("quota") as batch:
        batch.drop_column("eips")
    with op.batch_alter_table("vpc") as batch:
        batch.drop_column("enable_shared_snat")
    op.drop_index(op.f("ix_eip_project_id"), table_name="eip")
    op.drop_index(op.f("ix_eip_created_at"), table_name="eip")
    op.drop_table("eip")

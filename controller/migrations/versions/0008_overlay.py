"""VXLAN network identifiers for VPCs that span hosts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # VNIs themselves are allocated since 0001 (vpc.vni, unique); hosts now report their VTEP address.
    with op.batch_alter_table("host") as batch:
        batch.add_column(sa.Column("underlay_ip", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("host") as batch:
        batch.drop_column("underlay_ip")

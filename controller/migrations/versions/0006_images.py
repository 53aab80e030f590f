"""IMS image import and private images from servers: tags, virtual size and the data origin of an image.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.add_column(sa.Column("virtual_size", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("tags", sa.JSON(), server_default="[]", nullable=False))
        batch.add_column(sa.Column("data_origin", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image") as batch:
        batch.drop_column("data_origin")
        batch.drop_column("tags")
        batch.drop_column("virtual_size")

"""VXLAN network identifiers for VPCs that span hosts.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 07:00:00
"""

from __future__ import annotations

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

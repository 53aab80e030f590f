"""Per-host usage counters: what the live servers placed on a host claim, kept in the host row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ("claimed_vcpus", "claimed_ram_mib", "claimed_disk_gib", "claimed_servers")

# Filled from the servers already placed, as `services.host_usage.recompute` sums them.
_FILL = """
UPDATE host SET
  claimed_vcpus = (SELECT COALESCE(SUM(f.vcpus), 0) FROM server s JOIN flavor f ON f.id = s.flavor_id
                   WHERE s.host_id = host.id AND s.status != 'DELETED'),
  claimed_ram_mib = (SELECT COALESCE(SUM(f.ram_mib), 0) FROM server s JOIN flavor f ON f.id = s.flavor_id
                     WHERE s.host_id = host.id AND s.status != 'DELETED'),
  claimed_disk_gib = (SELECT COALESCE(SUM(s.root_volume_size), 0) FROM server s JOIN flavor f ON f.id = s.flavor_id
                      WHERE s.host_id = host.id AND s.status != 'DELETED'),
  claimed_servers = (SELECT COUNT(s.id) FROM server s JOIN flavor f ON f.id = s.flavor_id
                     WHERE s.host_id = host.id AND s.status != 'DELETED')
"""


def upgrade() -> None:
    with op.batch_alter_table("host") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.execute(_FILL)


def downgrade() -> None:
    with op.batch_alter_table("host") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)

"""Elastic IPs (EIP v1 `publicips`): addresses of the external network's pool, held by a project and bound to at
most one port at a time.

The database keeps an address from being handed out twice (unique `public_ip_address`) and a port from having
two EIPs (unique `port_id`; unbound EIPs have NULL there, and NULLs never collide).
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow


class Eip(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    public_ip_address: str = Field(unique=True)
    port_id: str | None = Field(default=None, unique=True)
    type: str = "5_bgp"
    alias: str | None = None
    bandwidth_id: str = Field(default_factory=new_id)
    bandwidth_name: str = ""
    bandwidth_size: int = 5  # Mbit/s; recorded as asked, not enforced
    bandwidth_share_type: str = "PER"
    # Set when a server create bound it (`publicip.delete_on_termination`): deleting that server releases it.
    delete_on_termination: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)

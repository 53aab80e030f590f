"""Hypervisor hosts, as their agents register and heartbeat them."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.models.common import utcnow


class Host(SQLModel, table=True):
    id: str = Field(primary_key=True)
    hostname: str
    url: str
    accelerator: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    availability_zone: str = Field(index=True)
    enabled: bool = True
    disabled_reason: str | None = None  # what the operator said when disabling it
    # The bearer secret this agent accepts from the controller, reported in its heartbeats (None: an older
    # agent, which accepts the shared join token). Per-host join tokens are hashed, so they cannot serve.
    agent_token: str | None = None
    registered_at: datetime = Field(default_factory=utcnow)
    last_heartbeat: datetime = Field(default_factory=utcnow)
    # The agent's VTEP address on the underlay (VXLAN between hosts); None: a single host without overlay.
    underlay_ip: str | None = None
    # The agent's address on the external network; None: the host has none, so no EIP can be bound to its ports.
    external_ip: str | None = None
    # What the servers placed here claim (live servers only: not DELETED), kept by `services.host_usage` in the
    # transaction that places, resizes, frees or deletes a server, so a claim reads one row per host instead of
    # summing every server; the reconciler recomputes them from the servers to heal any drift.
    claimed_vcpus: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    claimed_ram_mib: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    claimed_disk_gib: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    claimed_servers: int = Field(default=0, sa_column_kwargs={"server_default": "0"})

"""VPC v1 networking: VPCs, subnets, security groups and their rules, and the ports (NICs) IPAM hands out.

Uniqueness that matters for correctness lives in the database: one VNI per VPC, one MAC per port, one port per
(subnet, IP). IPAM relies on these constraints, not on a Python lock, so controllers can share a database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow


class Vpc(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    name: str
    cidr: str
    description: str = ""
    status: str = "OK"
    vni: int = Field(unique=True)
    # Servers without an EIP reach the external network through the VPC gateway's SNAT (a labcloud field).
    enable_shared_snat: bool = True
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Subnet(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    vpc_id: str = Field(foreign_key="vpc.id", index=True)
    name: str
    description: str = ""
    cidr: str
    gateway_ip: str
    dhcp_enable: bool = True
    primary_dns: str | None = None
    secondary_dns: str | None = None
    availability_zone: str | None = None
    status: str = "ACTIVE"
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def dns(self) -> list[str]:
        return [d for d in (self.primary_dns, self.secondary_dns) if d]


class SecurityGroup(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    name: str
    description: str = ""
    vpc_id: str | None = None
    # The project id on its "default" group, None elsewhere: a unique column, so one default per project even
    # when two first requests race (NULLs never collide).
    default_of: str | None = Field(default=None, unique=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class SecurityGroupRule(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    security_group_id: str = Field(foreign_key="securitygroup.id", index=True)
    direction: str  # ingress | egress
    ethertype: str = "IPv4"
    protocol: str | None = None  # tcp | udp | icmp; None = any
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = Field(default=None, index=True)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Port(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("subnet_id", "ip_address", name="uq_port_subnet_ip"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    vpc_id: str = Field(foreign_key="vpc.id", index=True)
    subnet_id: str = Field(foreign_key="subnet.id", index=True)
    ip_address: str
    mac_address: str = Field(unique=True)
    server_id: str | None = Field(default=None, index=True)
    device_owner: str = "compute:lab-1a"
    security_group_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = "ACTIVE"
    created_at: datetime = Field(default_factory=utcnow, index=True)


class IdCounter(SQLModel, table=True):
    """Monotonic counters (e.g. the next VPC VNI): a number is never handed out twice, even after a delete."""

    __tablename__ = "id_counter"

    name: str = Field(primary_key=True)
    value: int = 0

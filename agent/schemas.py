"""Wire schemas between the controller and an agent.

The controller always sends the whole desired state of an object (`PUT`), keyed by ids the controller chose, so a
retried call is harmless. This module imports neither libvirt nor pyroute2: the controller imports it on hosts
without either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

PowerState = Literal["running", "shutoff", "paused", "crashed", "missing"]


class SubnetSpec(BaseModel):
    id: str
    cidr: str
    gateway_ip: str
    dhcp_enable: bool = True
    dns: list[str] = Field(default_factory=list)
    mtu: int = 1450


class NetworkSpec(BaseModel):
    """A VPC as one host sees it: a bridge, a router namespace with the gateways, DHCP."""

    vpc_id: str
    vni: int
    cidr: str
    subnets: list[SubnetSpec] = Field(default_factory=list)


class RuleSpec(BaseModel):
    id: str
    direction: Literal["ingress", "egress"]
    ethertype: Literal["IPv4", "IPv6"] = "IPv4"
    protocol: str | None = None  # tcp, udp, icmp or None for any
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


class SecurityGroupSpec(BaseModel):
    id: str
    rules: list[RuleSpec] = Field(default_factory=list)
    member_ips: list[str] = Field(
        default_factory=list
    )  # fixed IPs of every port in the group, for remote groups


class PortSpec(BaseModel):
    """One NIC of a server: where it plugs in, its addresses and the groups that filter it."""

    id: str
    mac: str
    ip: str
    subnet_id: str
    vpc_id: str
    security_group_ids: list[str] = Field(default_factory=list)


class ImageRef(BaseModel):
    id: str
    checksum: str  # sha256 of the qcow2 file; the agent's cache key
    url: str  # where the agent fetches it (the controller's image store)
    disk_format: str = "qcow2"
    min_disk_gib: int = 0


class VolumeAttachment(BaseModel):
    """A data volume plugged into a server: which file (by volume id), as which guest disk."""

    volume_id: str
    device: str = Field(pattern=r"^vd[b-z]$")  # the libvirt target; the guest names it by probe order
    serial: str = Field(max_length=20)  # /sys/block/vdX/serial in the guest; virtio keeps 20 characters


class ServerSpec(BaseModel):
    """The whole desired server. `PUT /v1/servers/{id}` makes the host match it."""

    id: str
    name: str
    hostname: str
    project_id: str
    vcpus: int
    ram_mib: int
    root_disk_gib: int
    image: ImageRef
    ports: list[PortSpec]
    networks: list[NetworkSpec]
    security_groups: list[SecurityGroupSpec] = Field(default_factory=list)
    ssh_keys: list[str] = Field(default_factory=list)
    admin_pass: str | None = None
    user_data: str | None = None  # decoded text, as the guest should receive it
    power: Literal["running", "shutoff"] = "running"
    # None keeps the volumes the host already has for this server (a controller that does not track them);
    # a list is the whole desired set, used when the domain is (re)defined.
    volumes: list[VolumeAttachment] | None = None


class ServerState(BaseModel):
    id: str
    power: PowerState
    accelerator: str | None = None


class VolumeSpec(BaseModel):
    """A data volume on one host: a qcow2 file of `size_gib`. `PUT /v1/volumes/{id}` makes sure it exists."""

    id: str
    size_gib: int = Field(ge=1)


class VolumeState(BaseModel):
    id: str
    size_gib: int
    server_id: str | None = None  # the server on this host whose spec attaches it


class ServerAction(BaseModel):
    action: Literal["start", "stop", "reboot"]
    type: Literal["SOFT", "HARD"] = "SOFT"


class ConsoleOutput(BaseModel):
    output: str


class HostInfo(BaseModel):
    """What an agent reports when it registers and on every heartbeat."""

    host_id: str
    hostname: str
    url: str
    accelerator: Literal["kvm", "tcg"]
    vcpus: int
    memory_mib: int
    disk_gib: int
    availability_zone: str = "lab-1a"
    servers: list[ServerState] = Field(default_factory=list)


class AgentError(BaseModel):
    code: str
    message: str

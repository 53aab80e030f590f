"""Wire schemas between the controller and an agent.

The controller always sends the whole desired state of an object (`PUT`), keyed by ids the controller chose, so a
retried call is harmless. This module imports neither libvirt nor pyroute2: the controller imports it on hosts
without either.
"""

from __future__ import annotations

import hashlib
import json
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


class RemotePort(BaseModel):
    """A port of the VPC on another host: the local router reaches it without ARP (a static neighbour)."""

    ip: str
    mac: str


class OverlaySpec(BaseModel):
    """The rest of a VPC as one host sees it: the other hosts' VTEPs (underlay IPs) to flood to, and their ports.

    `version` is the controller's clock (ns) when it was computed: a host keeps the newest one it was given, so
    a stale copy (in an old server spec, or a retried call) never overrides a newer push.
    """

    version: int = 0
    peers: list[str] = Field(default_factory=list)
    remote_ports: list[RemotePort] = Field(default_factory=list)

    def digest(self) -> str:
        """What this view says, order and version aside: hosts report it in `HostInfo.overlays` and the
        controller compares it with the view it wants them to have (`controller.services.overlay_repair`)."""
        doc = {
            "peers": sorted(self.peers),
            "remote_ports": sorted((p.ip, p.mac.lower()) for p in self.remote_ports),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


class NetworkSpec(BaseModel):
    """A VPC as one host sees it: a bridge, a router namespace with the gateways, DHCP, the VXLAN overlay."""

    vpc_id: str
    vni: int
    cidr: str
    subnets: list[SubnetSpec] = Field(default_factory=list)
    overlay: OverlaySpec = Field(default_factory=OverlaySpec)


class FloatingIpSpec(BaseModel):
    """An EIP bound to a port of a server on this host: 1:1 NAT between `eip` and `fixed_ip` in the VPC's router."""

    eip: str
    port_id: str
    vpc_id: str
    fixed_ip: str


class ExternalSpec(BaseModel):
    """What one host does for the external network (`PUT /v1/external`): the EIPs bound to its ports, and the
    VPCs whose servers without an EIP reach the external network through shared SNAT. `version` is the
    controller's clock (ns) when it was computed: a host keeps the newest one it was given."""

    version: int = 0
    floating_ips: list[FloatingIpSpec] = Field(default_factory=list)
    snat_vpcs: list[str] = Field(default_factory=list)


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

    def digest(self) -> str:
        """What the group says (rules and members), order aside: hosts report it in `HostInfo.security_groups`
        and the controller compares it with the group's current state (`controller.services.sg_repair`)."""
        doc = {
            "rules": sorted(rule.model_dump_json() for rule in self.rules),
            "member_ips": sorted(self.member_ips),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


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
    url: str  # where the agent fetches it (the controller's image store; carries a grant for this image)
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


class BackupFile(BaseModel):
    """One disk backup in the controller's backup store: `url` to GET it (join token; the URL carries a grant
    for this backup), its sha256, or `url` None for a disk that was never written (restores as an empty disk)."""

    url: str | None
    checksum: str | None = None


class BackupDisk(BaseModel):
    backup_id: str  # the disk backup's id (one child of a server backup)
    volume_id: str | None = None  # None: the server's root disk


class BackupTake(BaseModel):
    """`POST /v1/backups/take`: copy these disks from one point in time into the host's backup staging.

    `server_id` set: disks of that server (root and attached volumes); None: each disk is a volume, copied
    through whichever server attaches it, if any. Copies already staged are kept, so a retry is harmless."""

    server_id: str | None = None
    disks: list[BackupDisk]


class StagedBackup(BaseModel):
    backup_id: str
    size: int  # bytes of the staged qcow2
    virtual_size: int  # bytes the guest sees
    consistent_with: Literal["running", "shutoff", "detached"]


class BackupUpload(BaseModel):
    """`POST /v1/backups/{id}/upload`: stream the staged copy to `url` (the controller's backup store, with a
    grant to write this backup)."""

    url: str


class UploadedBackup(BaseModel):
    backup_id: str
    size: int
    checksum: str  # sha256


class DiskRestore(BaseModel):
    backup: BackupFile
    volume_id: str | None = None  # None: the server's root disk


class ServerRestore(BaseModel):
    """`POST /v1/servers/{id}/restore`: replace the stopped server's disks with backups, keeping their sizes."""

    disks: list[DiskRestore]


class VolumeSource(BaseModel):
    """What a new volume's file is filled from: an image (through the agent's image cache, as for root disks),
    or a snapshot stored on the same host."""

    kind: Literal["image", "snapshot", "backup"]
    id: str
    image: ImageRef | None = None  # kind "image": where the agent fetches it
    backup: BackupFile | None = None  # kind "backup": where the agent fetches it


class RebuildRequest(BaseModel):
    """`POST /v1/servers/{id}/rebuild`: a new root disk and seed from `spec` (reinstall or change OS).

    `rebuild_id` (the controller's job id) makes a repeated call harmless: its disks are made only once.
    """

    spec: ServerSpec
    rebuild_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")


class VolumeSpec(BaseModel):
    """A data volume on one host: a qcow2 file of `size_gib`. `PUT /v1/volumes/{id}` makes sure it exists.

    `source` fills the file when it is first made (never afterwards); None makes an empty volume.
    """

    id: str
    size_gib: int = Field(ge=1)
    source: VolumeSource | None = None


class VolumeRollback(BaseModel):
    """`POST /v1/volumes/{id}/rollback`: replace the detached volume's data with `source` (None: empty it)."""

    source: VolumeSource | None = None


class SnapshotSpec(BaseModel):
    """A point-in-time copy of one volume on this host. `PUT /v1/snapshots/{id}` makes it once; a later PUT
    keeps the copy it made."""

    id: str
    volume_id: str


class SnapshotState(BaseModel):
    id: str
    size_gib: int


class VolumeState(BaseModel):
    id: str
    size_gib: int
    server_id: str | None = None  # the server on this host whose spec attaches it


class DiskExport(BaseModel):
    """A server's root disk flattened to a standalone qcow2 on the host (`POST /v1/servers/{id}/root-export`),
    fetched with `GET /v1/exports/{id}/file` and removed with `DELETE /v1/exports/{id}`."""

    id: str
    server_id: str
    size: int  # bytes of the file
    virtual_size: int  # bytes the guest saw
    checksum: str  # sha256 of the file
    consistent_with: Literal["running", "shutoff"]  # how it was taken: live point-in-time copy, or stopped


class VolumeExport(BaseModel):
    """A detached volume offered to another host (`POST /v1/volumes/{id}/export/{export_id}`): its file, linked
    under `exports/`, fetched with `GET /v1/exports/{export_id}/file`, removed with `DELETE /v1/exports/{id}`."""

    id: str
    volume_id: str
    size: int  # bytes of the file
    virtual_size: int  # bytes the guest sees
    checksum: str  # sha256 of the file
    # The bearer secret the source accepts for this export's file and nothing else (`agent.storage.export_tokens`):
    # what the fetching host is given, never the source agent's API token.
    download_token: str


class VolumeFetch(BaseModel):
    """`POST /v1/volumes/{id}/fetch`: copy a volume another host exports into this host's volumes (a volume
    move). `token` is the export's `download_token` (good for that file only); the copy must hash to `checksum`."""

    url: str
    token: str
    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")


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
    volumes: list[str] = Field(default_factory=list)  # ids of the volume files on this host
    underlay_ip: str | None = None  # this host's VTEP address; None: single-host, no overlay
    external_ip: str | None = None  # this host's address on the external network; None: it cannot serve EIPs
    # VPC id -> `OverlaySpec.digest()` of the overlay view this host applies, for every VPC network it has;
    # the reconciler pushes a fresh view where it differs from the controller's (a host that missed a push).
    overlays: dict[str, str] = Field(default_factory=dict)
    # Security group id -> `SecurityGroupSpec.digest()` of the rules and members this host holds for it ("mixed"
    # when its stored specs disagree); the reconciler pushes the groups whose state differs.
    security_groups: dict[str, str] = Field(default_factory=dict)
    # The bearer secret this agent accepts from the controller (besides its join token, which the controller
    # keeps only as a hash when it is a per-host token); None: the controller uses the shared join token.
    agent_token: str | None = None


class AgentError(BaseModel):
    code: str
    message: str

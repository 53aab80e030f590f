"""The ServerDetail shape of the ECS API, and the listing query behind `GET /cloudservers/detail`.

Keys and JSON types follow `huaweicloudsdkecs.v2.model.ServerDetail`: the SDK casts every value, so flavor
sizes are strings, `OS-EXT-STS:power_state` is an int and `locked` a real boolean. A page of servers is shaped
from a handful of bulk queries (ports, flavors, groups, hosts), never one query per server.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.errors import BadRequest
from controller.models.common import iso_z, utcnow
from controller.models.eip import Eip
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.network import Port, SecurityGroup
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services.volume_views import attached_volumes, server_detail_volume
from controller.state import DELETED, ERROR, POWER_STATE, VM_STATE

DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
MAX_NICS = 12
ROOT_DEVICE = "/dev/vda"
FAULT_CODE = 500  # Nova and Huawei report faults with an HTTP-like integer code; ours goes into `details`


@dataclass(frozen=True)
class ServerFilters:
    name: str | None = None
    status: str | None = None
    flavor: str | None = None
    ip: str | None = None
    ip_eq: str | None = None
    server_id: str | None = None
    tags: str | None = None
    not_tags: str | None = None
    offset: int | None = None
    limit: int | None = None


@dataclass
class Related:
    """Everything a page of ServerDetails needs besides the server rows, fetched in bulk."""

    ports: dict[str, list[Any]]  # rows of _PORT_COLUMNS, in NIC order
    flavors: dict[str, Flavor]
    groups: dict[str, SecurityGroup]
    hosts: dict[str, Host]
    host_dead_seconds: float
    volumes: dict[str, list[Volume]] = field(default_factory=dict)
    floating: dict[str, str] = field(default_factory=dict)  # port id -> the EIP bound to it


def hostname_of(name: str, server_id: str) -> str:
    """The server name made a DNS label: lower case, '-' for anything else, at most 63 characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")[:63].rstrip("-")
    return label or f"server-{server_id[:8]}"


def host_digest(project_id: str, host_id: str | None) -> str:
    """Nova's `hostId`: a per-project hash of the host, so tenants can tell co-located servers apart."""
    if not host_id:
        return ""
    return hashlib.sha224(f"{project_id}{host_id}".encode()).hexdigest()


_PORT_COLUMNS = (Port.id, Port.server_id, Port.vpc_id, Port.ip_address, Port.mac_address)


def load_related(session: Session, servers: list[Server], host_dead_seconds: float) -> Related:
    ids = [s.id for s in servers]
    ports: dict[str, list[Any]] = defaultdict(list)
    if ids:
        # Plain rows of the columns the view shows: a page of 1,000 servers has 1,000 ports, and building ORM
        # objects for them cost more than the rest of this function.
        stmt = (
            select(*_PORT_COLUMNS)
            .where(col(Port.server_id).in_(ids))
            .order_by(col(Port.created_at), col(Port.id))
        )
        for port in session.connection().execute(stmt):
            ports[port.server_id or ""].append(port)
    flavor_ids = {s.flavor_id for s in servers}
    group_ids = {gid for s in servers for gid in s.security_group_ids}
    host_ids = {s.host_id for s in servers if s.host_id}
    return Related(
        ports=ports,
        flavors=_by_id(session, Flavor, flavor_ids),
        groups=_by_id(session, SecurityGroup, group_ids),
        hosts=_by_id(session, Host, host_ids),
        host_dead_seconds=host_dead_seconds,
        volumes=attached_volumes(session, ids),
        floating=_floating(session, [p.id for group in ports.values() for p in group]),
    )


def _floating(session: Session, port_ids: list[str]) -> dict[str, str]:
    if not port_ids:
        return {}
    rows = session.exec(
        select(Eip.port_id, Eip.public_ip_address).where(col(Eip.port_id).in_(port_ids))
    ).all()
    return {port_id: address for port_id, address in rows if port_id}


def _by_id(session: Session, model: Any, ids: set[str]) -> dict[str, Any]:
    if not ids:
        return {}
    return {row.id: row for row in session.exec(select(model).where(col(model.id).in_(ids))).all()}


def server_detail(server: Server, related: Related) -> dict[str, Any]:
    flavor = related.flavors.get(server.flavor_id)
    host = related.hosts.get(server.host_id) if server.host_id else None
    ports = related.ports.get(server.id, [])
    addresses: dict[str, list[dict[str, Any]]] = {}
    for index, port in enumerate(ports):
        addresses.setdefault(port.vpc_id, []).append(
            {
                "version": "4",
                "addr": port.ip_address,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                "OS-EXT-IPS:port_id": port.id,
                "primary": index == 0,
            }
        )
        eip = related.floating.get(port.id)
        if eip is not None:  # Nova's and Huawei's shape: the EIP is one more address of the port's network
            addresses[port.vpc_id].append(
                {
                    "version": "4",
                    "addr": eip,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                    "OS-EXT-IPS:port_id": port.id,
                    "primary": False,
                }
            )
    detail: dict[str, Any] = {
        "id": server.id,
        "name": server.name,
        "description": server.description,
        "status": server.status,
        "created": iso_z(server.created_at),
        "updated": iso_z(server.updated_at),
        "tenant_id": server.project_id,
        "user_id": server.user_id,
        "hostId": host_digest(server.project_id, server.host_id),
        "key_name": server.key_name or "",
        "locked": False,
        "progress": 100 if server.launched_at else 0,
        "image": {"id": server.image_id},
        "flavor": {
            "id": server.flavor_id,
            "name": flavor.name if flavor else server.flavor_id,
            "vcpus": str(flavor.vcpus) if flavor else "0",
            "ram": str(flavor.ram_mib) if flavor else "0",
            "disk": str(server.root_volume_size),
        },
        "addresses": addresses,
        "security_groups": [
            {"id": gid, "name": related.groups[gid].name if gid in related.groups else gid}
            for gid in server.security_group_ids
        ],
        "accessIPv4": "",
        "accessIPv6": "",
        "config_drive": "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": server.availability_zone,
        "OS-EXT-STS:vm_state": VM_STATE.get(server.status, "error"),
        "OS-EXT-STS:task_state": server.task_state or "",
        "OS-EXT-STS:power_state": POWER_STATE.get(server.status, 0),
        "OS-EXT-SRV-ATTR:host": server.host_id or "",
        "OS-EXT-SRV-ATTR:hypervisor_hostname": host.hostname if host else "",
        "OS-EXT-SRV-ATTR:instance_name": server.instance_name,
        "OS-EXT-SRV-ATTR:hostname": hostname_of(server.name, server.id),
        "OS-EXT-SRV-ATTR:reservation_id": "",
        "OS-EXT-SRV-ATTR:launch_index": 0,
        "OS-EXT-SRV-ATTR:kernel_id": "",
        "OS-EXT-SRV-ATTR:ramdisk_id": "",
        "OS-EXT-SRV-ATTR:root_device_name": ROOT_DEVICE,
        "OS-EXT-SRV-ATTR:user_data": server.user_data or "",
        "OS-SRV-USG:launched_at": iso_z(server.launched_at) or "",
        "OS-SRV-USG:terminated_at": iso_z(server.deleted_at) or "",
        "os-extended-volumes:volumes_attached": [
            server_detail_volume(v) for v in related.volumes.get(server.id, [])
        ],
        "host_status": _host_status(host, related.host_dead_seconds),
        "metadata": dict(server.meta),
        "tags": [f"{t['key']}={t.get('value', '')}" for t in server.tags],
        "sys_tags": [],
        "enterprise_project_id": "0",
    }
    if server.status == ERROR:
        detail["fault"] = {
            "code": FAULT_CODE,
            "message": server.fault_message or "",
            "details": server.fault_code or "",
            "created": iso_z(server.fault_at or server.updated_at),
        }
    return detail


def _host_status(host: Host | None, dead_after: float) -> str:
    if host is None:
        return ""
    if not host.enabled:
        return "MAINTENANCE"
    age = (utcnow() - host.last_heartbeat).total_seconds()
    return "UP" if age <= dead_after else "DOWN"


def interfaces_view(ports: list[Port]) -> dict[str, Any]:
    """`GET …/os-interface`: one interfaceAttachment per port, and how many more NICs could be attached."""
    return {
        "interfaceAttachments": [
            {
                "port_id": port.id,
                "net_id": port.subnet_id,
                "mac_addr": port.mac_address,
                "port_state": port.status,
                "fixed_ips": [{"ip_address": port.ip_address, "subnet_id": port.subnet_id}],
                "delete_on_termination": True,
            }
            for port in ports
        ],
        "attachableQuantity": {"free_nic": max(0, MAX_NICS - len(ports))},
    }


def list_servers(session: Session, project_id: str, filters: ServerFilters) -> tuple[int, list[Server]]:
    """(total before paging, one page of servers), newest first."""
    limit = DEFAULT_LIMIT if filters.limit is None else filters.limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}")
    page_no = filters.offset or 1  # `offset` is a page number; 0 and 1 both mean the first page
    if page_no < 0:
        raise BadRequest(f"Invalid offset {filters.offset}: it is a page number, 1 or more")

    stmt = select(Server.id).where(Server.project_id == project_id, Server.status != DELETED)
    if filters.name:
        stmt = stmt.where(col(Server.name).contains(filters.name, autoescape=True))
    if filters.status:
        stmt = stmt.where(Server.status == filters.status.upper())
    if filters.flavor:
        stmt = stmt.where(Server.flavor_id == filters.flavor)
    if filters.server_id:
        stmt = stmt.where(Server.id == filters.server_id)
    if filters.ip_eq:
        stmt = stmt.where(col(Server.id).in_(select(Port.server_id).where(Port.ip_address == filters.ip_eq)))
    if filters.ip:
        by_prefix = select(Port.server_id).where(col(Port.ip_address).startswith(filters.ip, autoescape=True))
        stmt = stmt.where(col(Server.id).in_(by_prefix))
    order = (col(Server.created_at).desc(), col(Server.id))

    if filters.tags or filters.not_tags:
        # Tags are a JSON list on the row: match them here, then page the ids that pass.
        wanted, unwanted = _tag_set(filters.tags), _tag_set(filters.not_tags)
        rows = session.exec(
            select(Server.id, Server.tags).where(col(Server.id).in_(stmt)).order_by(*order)
        ).all()
        ids = [sid for sid, tags in rows if _tags_match(tags, wanted, unwanted)]
        total = len(ids)
        page_ids = ids[(page_no - 1) * limit : page_no * limit]
        if not page_ids:
            return total, []
        by_id = {s.id: s for s in session.exec(select(Server).where(col(Server.id).in_(page_ids))).all()}
        return total, [by_id[sid] for sid in page_ids if sid in by_id]

    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    page_stmt = select(Server).where(col(Server.id).in_(stmt)).order_by(*order)
    servers = session.exec(page_stmt.offset((page_no - 1) * limit).limit(limit)).all()
    return int(total), list(servers)


def _tag_set(text: str | None) -> set[tuple[str, str]]:
    """`key=value,key2=value2` (a bare `key` matches any value)."""
    result = set()
    for item in (text or "").split(","):
        item = item.strip()
        if item:
            key, sep, value = item.partition("=")
            result.add((key, value if sep else "*"))
    return result


def _tags_match(
    tags: list[dict[str, Any]], wanted: set[tuple[str, str]], unwanted: set[tuple[str, str]]
) -> bool:
    have = {(t["key"], t.get("value", "")) for t in tags}
    keys = {k for k, _ in have}

    def has(tag: tuple[str, str]) -> bool:
        return tag[0] in keys if tag[1] == "*" else tag in have

    # Nova semantics: `tags` needs all of them; `not-tags` hides servers that carry all of them.
    if wanted and not all(has(t) for t in wanted):
        return False
    return not (unwanted and all(has(t) for t in unwanted))

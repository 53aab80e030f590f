"""The ServerDetail shape of the ECS API, and the listing query behind `GET /cloudservers/detail`.

Keys and JSON types follow `huaweicloudsdkecs.v2.model.ServerDetail`: the SDK casts every value, so flavor
sizes are strings, `OS-EXT-STS:power_state` is an int and `locked` a real boolean. A page of servers is shaped
from a handful of bulk queries (ports, flavors, groups, hosts, volumes, EIPs), never one query per server.

Listing 1,000 servers is the hot path, so it reads plain rows of exactly the columns the view shows (no ORM
objects), decodes the JSON columns through a small cache (a page repeats a few values: `[]`, `{}`, one group
list), works out what depends only on the host once per host, and builds each ServerDetail in one dict literal.
`show` passes a Server object through the same `server_detail`: both have the attributes it reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, Text, TypeDecorator, cast, func, type_coerce
from sqlmodel import Session, col, select

from controller.errors import BadRequest
from controller.models.common import iso_z, utcnow
from controller.models.eip import Eip
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.network import Port, SecurityGroup
from controller.models.server import Server, instance_name_of
from controller.services.volume_views import attached_volume_rows, server_detail_volume
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
    volumes: dict[str, list[Any]] = field(default_factory=dict)  # rows of `attached_volume_rows`
    floating: dict[str, str] = field(default_factory=dict)  # port id -> the EIP bound to it
    # Per host id: (hypervisor hostname, host_status), worked out once for the page.
    host_views: dict[str, tuple[str, str]] = field(default_factory=dict)
    digests: dict[tuple[str, str | None], str] = field(default_factory=dict)  # memo of `host_digest`

    def digest(self, project_id: str, host_id: str | None) -> str:
        key = (project_id, host_id)
        value = self.digests.get(key)
        if value is None:
            value = self.digests[key] = host_digest(project_id, host_id)
        return value


_LABEL = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9-]+")
_HYPHENS = re.compile(r"-{2,}")


def hostname_of(name: str, server_id: str) -> str:
    """The server name made a DNS label: lower case, '-' for anything else, at most 63 characters."""
    if len(name) <= 63 and _LABEL.fullmatch(name):
        return name  # already a label (most names): what the substitutions below would return
    label = _NOT_LABEL_CHARS.sub("-", name.lower())
    label = _HYPHENS.sub("-", label).strip("-")[:63].rstrip("-")
    return label or f"server-{server_id[:8]}"


def host_digest(project_id: str, host_id: str | None) -> str:
    """Nova's `hostId`: a per-project hash of the host, so tenants can tell co-located servers apart."""
    if not host_id:
        return ""
    return hashlib.sha224(f"{project_id}{host_id}".encode()).hexdigest()


_PORT_COLUMNS = (Port.id, Port.server_id, Port.vpc_id, Port.ip_address, Port.mac_address)


def load_related(session: Session, servers: Sequence[Any], host_dead_seconds: float) -> Related:
    """`servers` are Server objects or rows of `_DETAIL_COLUMNS`."""
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
    hosts: dict[str, Host] = _by_id(session, Host, host_ids)
    return Related(
        ports=ports,
        flavors=_by_id(session, Flavor, flavor_ids),
        groups=_by_id(session, SecurityGroup, group_ids),
        hosts=hosts,
        host_dead_seconds=host_dead_seconds,
        volumes=attached_volume_rows(session, ids),
        floating=_floating(session, [p.id for group in ports.values() for p in group]),
        host_views={h.id: (h.hostname, _host_status(h, host_dead_seconds)) for h in hosts.values()},
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


def server_detail(server: Any, related: Related) -> dict[str, Any]:
    """One ServerDetail; `server` is a Server or a row of `_DETAIL_COLUMNS` (the attributes read are the same)."""
    sid, project_id, host_id, flavor_id, status = (
        server.id,
        server.project_id,
        server.host_id,
        server.flavor_id,
        server.status,
    )
    flavor = related.flavors.get(flavor_id)
    hypervisor, host_status = related.host_views.get(host_id, ("", "")) if host_id else ("", "")
    groups = related.groups
    detail: dict[str, Any] = {
        "id": sid,
        "name": server.name,
        "description": server.description,
        "status": status,
        "created": iso_z(server.created_at),
        "updated": iso_z(server.updated_at),
        "tenant_id": project_id,
        "user_id": server.user_id,
        "hostId": related.digest(project_id, host_id),
        "key_name": server.key_name or "",
        "locked": False,
        "progress": 100 if server.launched_at else 0,
        "image": {"id": server.image_id},
        "flavor": {
            "id": flavor_id,
            "name": flavor.name if flavor else flavor_id,
            "vcpus": str(flavor.vcpus) if flavor else "0",
            "ram": str(flavor.ram_mib) if flavor else "0",
            "disk": str(server.root_volume_size),
        },
        "addresses": _addresses(related.ports.get(sid, ()), related.floating),
        "security_groups": [
            {"id": gid, "name": groups[gid].name if gid in groups else gid}
            for gid in server.security_group_ids
        ],
        "accessIPv4": "",
        "accessIPv6": "",
        "config_drive": "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": server.availability_zone,
        "OS-EXT-STS:vm_state": VM_STATE.get(status, "error"),
        "OS-EXT-STS:task_state": server.task_state or "",
        "OS-EXT-STS:power_state": POWER_STATE.get(status, 0),
        "OS-EXT-SRV-ATTR:host": host_id or "",
        "OS-EXT-SRV-ATTR:hypervisor_hostname": hypervisor,
        "OS-EXT-SRV-ATTR:instance_name": instance_name_of(sid),
        "OS-EXT-SRV-ATTR:hostname": hostname_of(server.name, sid),
        "OS-EXT-SRV-ATTR:reservation_id": "",
        "OS-EXT-SRV-ATTR:launch_index": 0,
        "OS-EXT-SRV-ATTR:kernel_id": "",
        "OS-EXT-SRV-ATTR:ramdisk_id": "",
        "OS-EXT-SRV-ATTR:root_device_name": ROOT_DEVICE,
        "OS-EXT-SRV-ATTR:user_data": server.user_data or "",
        "OS-SRV-USG:launched_at": iso_z(server.launched_at) or "",
        "OS-SRV-USG:terminated_at": iso_z(server.deleted_at) or "",
        "os-extended-volumes:volumes_attached": [
            server_detail_volume(v) for v in related.volumes.get(sid, ())
        ],
        "host_status": host_status,
        "metadata": dict(server.meta),
        "tags": [f"{t['key']}={t.get('value', '')}" for t in server.tags],
        "sys_tags": [],
        "enterprise_project_id": "0",
    }
    if status == ERROR:
        detail["fault"] = {
            "code": FAULT_CODE,
            "message": server.fault_message or "",
            "details": server.fault_code or "",
            "created": iso_z(server.fault_at or server.updated_at),
        }
    return detail


def _addresses(ports: Sequence[Any], floating: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    addresses: dict[str, list[dict[str, Any]]] = {}
    for index, port in enumerate(ports):
        entries = addresses.setdefault(port.vpc_id, [])
        entries.append(
            {
                "version": "4",
                "addr": port.ip_address,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                "OS-EXT-IPS:port_id": port.id,
                "primary": index == 0,
            }
        )
        eip = floating.get(port.id)
        if eip is not None:  # Nova's and Huawei's shape: the EIP is one more address of the port's network
            entries.append(
                {
                    "version": "4",
                    "addr": eip,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": port.mac_address,
                    "OS-EXT-IPS:port_id": port.id,
                    "primary": False,
                }
            )
    return addresses


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


class _CachedJSON(TypeDecorator[Any]):
    """A JSON column read as its text (CAST … AS TEXT, also on PostgreSQL whose driver would parse it) and decoded
    through `_json_value`'s cache. The values are shared between rows: only read them."""

    impl = Text
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else _json_value(value)


@lru_cache(maxsize=1024)
def _json_value(text: str) -> Any:
    return json.loads(text)


def _timestamp(column: Any) -> Any:
    """A timestamp column read by the driver's own datetime parsing; `iso_z` takes naive values as UTC, which
    is how they are stored."""
    return type_coerce(column, DateTime()).label(column.key)


# Exactly the columns `server_detail` and `load_related` read, under the Server attribute names.
_DETAIL_COLUMNS = (
    Server.id,
    Server.project_id,
    Server.user_id,
    Server.name,
    Server.description,
    Server.status,
    Server.task_state,
    Server.fault_code,
    Server.fault_message,
    _timestamp(Server.fault_at),
    Server.flavor_id,
    Server.image_id,
    Server.host_id,
    Server.availability_zone,
    Server.key_name,
    cast(Server.security_group_ids, _CachedJSON).label("security_group_ids"),
    cast(Server.meta, _CachedJSON).label("meta"),
    cast(Server.tags, _CachedJSON).label("tags"),
    Server.root_volume_size,
    Server.user_data,
    _timestamp(Server.created_at),
    _timestamp(Server.updated_at),
    _timestamp(Server.launched_at),
    _timestamp(Server.deleted_at),
)


def list_servers(session: Session, project_id: str, filters: ServerFilters) -> tuple[int, list[Any]]:
    """(total before paging, one page of servers as rows of `_DETAIL_COLUMNS`), newest first."""
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
        found = session.connection().execute(select(*_DETAIL_COLUMNS).where(col(Server.id).in_(page_ids)))
        by_id = {row.id: row for row in found}
        return total, [by_id[sid] for sid in page_ids if sid in by_id]

    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    page_stmt = select(*_DETAIL_COLUMNS).where(col(Server.id).in_(stmt)).order_by(*order)
    rows = session.connection().execute(page_stmt.offset((page_no - 1) * limit).limit(limit)).all()
    return int(total), list(rows)


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

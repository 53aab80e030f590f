"""The ServerDetail shape of the ECS API, and the listing query behind `GET /cloudservers/detail`.

Keys and JSON types follow `huaweicloudsdkecs.v2.model.ServerDetail`: the SDK casts every value, so flavor
sizes are strings, `OS-EXT-STS:power_state` is an int and `locked` a real boolean. A page of servers is shaped
from a handful of bulk queries (ports with their EIPs, flavors, groups, hosts, volumes), never one query per
server.

Listing 1,000 servers is the hot path, so it reads plain rows of exactly the columns the view shows (no ORM
objects), decodes the JSON columns through a small cache (a page repeats a few values: `[]`, `{}`, one group
list), works out what depends only on the host once per host, and keeps rendered ServerDetails in a cache keyed
by the rows they were made of (`server_detail_json`). `show` reads the same row for one server (`server_row`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from pydantic_core import to_json
from sqlalchemy import DateTime, Text, bindparam, cast, func, type_coerce
from sqlalchemy.engine import Connection
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
# Rendered ServerDetails kept (~1.5 KiB each): a 1,000-server page, several times over.
VIEW_CACHE_SIZE = 4096
CACHED_USER_DATA_MAX = 1024  # characters: user data is in the view, and up to 32 KiB


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
    """Everything a page of ServerDetails needs besides the server rows, fetched in bulk as plain tuples (they
    are part of the keys of the rendered-view cache, and tuples compare much faster than rows)."""

    ports: dict[str, list[tuple[Any, ...]]]  # _PORT_COLUMNS (with the port's EIP, if any), in NIC order
    flavors: dict[str, tuple[str, int, int]]  # name, vcpus, ram_mib
    group_names: dict[str, str]
    volumes: dict[str, list[tuple[str, str | None]]]  # id, device (`attached_volume_rows`)
    hosts: dict[str, HostView]


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


_PORT_COLUMNS = (
    Port.id,
    Port.server_id,
    Port.vpc_id,
    Port.ip_address,
    Port.mac_address,
    Eip.public_ip_address,
)


# The statements of the hot paths are built once, with bind parameters: building one (and its cache key) took
# ten times as long as running it, about 0.2 ms each.
_PORTS_OF = (
    select(*_PORT_COLUMNS)
    .outerjoin(Eip, col(Eip.port_id) == col(Port.id))  # at most one EIP per port (unique port_id)
    .where(col(Port.server_id).in_(bindparam("ids", expanding=True)))
    .order_by(col(Port.created_at), col(Port.id))
)
_FLAVORS = select(Flavor.id, Flavor.name, Flavor.vcpus, Flavor.ram_mib).where(
    col(Flavor.id).in_(bindparam("ids", expanding=True))
)
_GROUP_NAMES = select(SecurityGroup.id, SecurityGroup.name).where(
    col(SecurityGroup.id).in_(bindparam("ids", expanding=True))
)
_HOSTS = select(Host.id, Host.hostname, Host.enabled, Host.last_heartbeat).where(
    col(Host.id).in_(bindparam("ids", expanding=True))
)


def load_related(session: Session, servers: Sequence[Any], host_dead_seconds: float) -> Related:
    """`servers` are rows of `_DETAIL_COLUMNS`."""
    ids = [s[0] for s in servers]
    conn = session.connection()
    ports: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    if ids:
        for port in conn.execute(_PORTS_OF, {"ids": ids}):
            ports[port[1] or ""].append(tuple(port))
    flavor_ids = list({s[_FLAVOR] for s in servers})
    group_ids = list({g for s in servers for g in json_value(s[_GROUPS])})
    return Related(
        ports=ports,
        flavors={f[0]: tuple(f[1:]) for f in conn.execute(_FLAVORS, {"ids": flavor_ids})}
        if flavor_ids
        else {},
        group_names={g[0]: g[1] for g in conn.execute(_GROUP_NAMES, {"ids": group_ids})} if group_ids else {},
        volumes=attached_volume_rows(session, ids),
        hosts=host_views(conn, {s[_HOST] for s in servers if s[_HOST]}, host_dead_seconds),
    )


class HostView(NamedTuple):
    hostname: str  # OS-EXT-SRV-ATTR:hypervisor_hostname
    status: str  # host_status: UP, DOWN or MAINTENANCE
    heartbeat_age: float  # seconds, when read


def host_views(conn: Connection, host_ids: set[str], dead_after: float) -> dict[str, HostView]:
    """What ServerDetail shows of each host, now."""
    if not host_ids:
        return {}
    now = utcnow()
    views = {}
    for host_id, hostname, enabled, heartbeat in conn.execute(_HOSTS, {"ids": list(host_ids)}):
        age = (now - heartbeat).total_seconds()
        views[host_id] = HostView(hostname, _host_status(enabled, age, dead_after), age)
    return views


def server_detail_json(server: Sequence[Any], related: Related) -> bytes:
    """One ServerDetail, rendered as JSON, from a row of `_DETAIL_COLUMNS` (`server_row`, `list_servers`).

    The view is a pure function of the rows it is made of, so those rows are the key of a cache of rendered
    views: nothing has to invalidate it (any write shows up as a different key, on every controller), and a
    listing of unchanged servers skips building and rendering them. Views with big user data are not kept.
    """
    sid, host_id = server[0], server[_HOST]
    names = related.group_names
    key = (
        tuple(server),
        tuple(related.ports.get(sid, ())),
        tuple(related.volumes.get(sid, ())),
        related.flavors.get(server[_FLAVOR]),
        tuple(names.get(gid, gid) for gid in json_value(server[_GROUPS])),
        related.hosts[host_id][:2] if host_id in related.hosts else ("", ""),
    )
    if len(server[_USER_DATA] or "") > CACHED_USER_DATA_MAX:
        return _render_detail(key)
    return _render_detail_cached(key)


def render_page(total: int, details: Iterable[bytes]) -> bytes:
    """`{"count": total, "servers": [...]}` from ServerDetails already rendered: joined as bytes, so no tree of
    1,000 dicts is built (or outlives a garbage-collector pass) on its way to the wire."""
    return b'{"count":' + str(total).encode() + b',"servers":[' + b",".join(details) + b"]}"


def _render_detail(key: tuple[Any, ...]) -> bytes:
    return to_json(_detail(*key))


_render_detail_cached = lru_cache(maxsize=VIEW_CACHE_SIZE)(_render_detail)


def _detail(
    server: Sequence[Any],
    ports: Sequence[Any],
    volumes: Sequence[Any],
    flavor: tuple[str, int, int] | None,
    group_names: tuple[str, ...],
    host_view: tuple[str, str],
) -> dict[str, Any]:
    (
        sid,
        project_id,
        user_id,
        name,
        description,
        status,
        task_state,
        fault_code,
        fault_message,
        fault_at,
        flavor_id,
        image_id,
        host_id,
        availability_zone,
        key_name,
        group_ids,
        meta,
        tags,
        root_gib,
        user_data,
        created_at,
        updated_at,
        launched_at,
        deleted_at,
    ) = server  # unpacked in one step: a row's attribute lookups were a quarter of a 1,000-server listing
    hypervisor, host_status = host_view
    flavor_name, vcpus, ram_mib = flavor or (flavor_id, 0, 0)
    detail: dict[str, Any] = {
        "id": sid,
        "name": name,
        "description": description,
        "status": status,
        "created": iso_z(created_at),
        "updated": iso_z(updated_at),
        "tenant_id": project_id,
        "user_id": user_id,
        "hostId": host_digest(project_id, host_id),
        "key_name": key_name or "",
        "locked": False,
        "progress": 100 if launched_at else 0,
        "image": {"id": image_id},
        "flavor": {
            "id": flavor_id,
            "name": flavor_name,
            "vcpus": str(vcpus),
            "ram": str(ram_mib),
            "disk": str(root_gib),
        },
        "addresses": _addresses(ports),
        "security_groups": [
            {"id": gid, "name": name} for gid, name in zip(json_value(group_ids), group_names, strict=True)
        ],
        "accessIPv4": "",
        "accessIPv6": "",
        "config_drive": "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": availability_zone,
        "OS-EXT-STS:vm_state": VM_STATE.get(status, "error"),
        "OS-EXT-STS:task_state": task_state or "",
        "OS-EXT-STS:power_state": POWER_STATE.get(status, 0),
        "OS-EXT-SRV-ATTR:host": host_id or "",
        "OS-EXT-SRV-ATTR:hypervisor_hostname": hypervisor,
        "OS-EXT-SRV-ATTR:instance_name": instance_name_of(sid),
        "OS-EXT-SRV-ATTR:hostname": hostname_of(name, sid),
        "OS-EXT-SRV-ATTR:reservation_id": "",
        "OS-EXT-SRV-ATTR:launch_index": 0,
        "OS-EXT-SRV-ATTR:kernel_id": "",
        "OS-EXT-SRV-ATTR:ramdisk_id": "",
        "OS-EXT-SRV-ATTR:root_device_name": ROOT_DEVICE,
        "OS-EXT-SRV-ATTR:user_data": user_data or "",
        "OS-SRV-USG:launched_at": iso_z(launched_at) or "",
        "OS-SRV-USG:terminated_at": iso_z(deleted_at) or "",
        "os-extended-volumes:volumes_attached": [server_detail_volume(*v) for v in volumes],
        "host_status": host_status,
        "metadata": dict(json_value(meta)),
        "tags": [f"{t['key']}={t.get('value', '')}" for t in json_value(tags)],
        "sys_tags": [],
        "enterprise_project_id": "0",
    }
    if status == ERROR:
        detail["fault"] = {
            "code": FAULT_CODE,
            "message": fault_message or "",
            "details": fault_code or "",
            "created": iso_z(fault_at or updated_at),
        }
    return detail


def _addresses(ports: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    addresses: dict[str, list[dict[str, Any]]] = {}
    for index, (port_id, _server_id, vpc_id, ip_address, mac_address, eip) in enumerate(
        ports
    ):  # _PORT_COLUMNS
        entries = addresses.setdefault(vpc_id, [])
        entries.append(
            {
                "version": "4",
                "addr": ip_address,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": mac_address,
                "OS-EXT-IPS:port_id": port_id,
                "primary": index == 0,
            }
        )
        if eip is not None:  # Nova's and Huawei's shape: the EIP is one more address of the port's network
            entries.append(
                {
                    "version": "4",
                    "addr": eip,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": mac_address,
                    "OS-EXT-IPS:port_id": port_id,
                    "primary": False,
                }
            )
    return addresses


def _host_status(enabled: bool, heartbeat_age: float, dead_after: float) -> str:
    if not enabled:
        return "MAINTENANCE"
    return "UP" if heartbeat_age <= dead_after else "DOWN"


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


def _json_text(column: Any) -> Any:
    """A JSON column read as its text (CAST … AS TEXT: PostgreSQL's driver would parse it), for `json_value`."""
    return cast(column, Text).label(column.key)


@lru_cache(maxsize=1024)
def json_value(text: str) -> Any:
    """A JSON column's text decoded through a cache: a page of servers repeats a few values (`[]`, `{}`, one
    group list), and decoding every one was a fifth of a listing. The values are shared: only read them."""
    return json.loads(text)


def _timestamp(column: Any) -> Any:
    """A timestamp column read by the driver's own datetime parsing; `iso_z` takes naive values as UTC, which
    is how they are stored."""
    return type_coerce(column, DateTime()).label(column.key)


# Exactly the columns `_detail` and `load_related` read, under the Server attribute names.
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
    _json_text(Server.security_group_ids),
    _json_text(Server.meta),
    _json_text(Server.tags),
    Server.root_volume_size,
    Server.user_data,
    _timestamp(Server.created_at),
    _timestamp(Server.updated_at),
    _timestamp(Server.launched_at),
    _timestamp(Server.deleted_at),
)


_NAMES = [c.key for c in _DETAIL_COLUMNS]
_FLAVOR, _HOST, _GROUPS, _USER_DATA = (
    _NAMES.index("flavor_id"),
    _NAMES.index("host_id"),
    _NAMES.index("security_group_ids"),
    _NAMES.index("user_data"),
)


_SERVER_ROW = select(*_DETAIL_COLUMNS).where(
    Server.id == bindparam("server_id"),
    Server.project_id == bindparam("project_id"),
    Server.status != DELETED,
)


def server_row(session: Session, project_id: str, server_id: str) -> Any | None:
    """The row of `_DETAIL_COLUMNS` of a live server of the project; None for deleted, unknown or foreign ones."""
    return (
        session.connection().execute(_SERVER_ROW, {"server_id": server_id, "project_id": project_id}).first()
    )


def list_servers(session: Session, project_id: str, filters: ServerFilters) -> tuple[int, list[Any]]:
    """(total before paging, one page of servers as rows of `_DETAIL_COLUMNS`), newest first."""
    limit = DEFAULT_LIMIT if filters.limit is None else filters.limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}")
    page_no = filters.offset or 1  # `offset` is a page number; 0 and 1 both mean the first page
    if page_no < 0:
        raise BadRequest(f"Invalid offset {filters.offset}: it is a page number, 1 or more")

    where = [Server.project_id == project_id, Server.status != DELETED]
    if filters.name:
        where.append(col(Server.name).contains(filters.name, autoescape=True))
    if filters.status:
        where.append(Server.status == filters.status.upper())
    if filters.flavor:
        where.append(Server.flavor_id == filters.flavor)
    if filters.server_id:
        where.append(Server.id == filters.server_id)
    if filters.ip_eq:
        where.append(col(Server.id).in_(select(Port.server_id).where(Port.ip_address == filters.ip_eq)))
    if filters.ip:
        by_prefix = select(Port.server_id).where(col(Port.ip_address).startswith(filters.ip, autoescape=True))
        where.append(col(Server.id).in_(by_prefix))
    order = (col(Server.created_at).desc(), col(Server.id))

    if filters.tags or filters.not_tags:
        # Tags are a JSON list on the row: match them here, then page the ids that pass.
        wanted, unwanted = _tag_set(filters.tags), _tag_set(filters.not_tags)
        rows = session.exec(select(Server.id, Server.tags).where(*where).order_by(*order)).all()
        ids = [sid for sid, tags in rows if _tags_match(tags, wanted, unwanted)]
        total = len(ids)
        page_ids = ids[(page_no - 1) * limit : page_no * limit]
        if not page_ids:
            return total, []
        found = session.connection().execute(select(*_DETAIL_COLUMNS).where(col(Server.id).in_(page_ids)))
        by_id = {row.id: row for row in found}
        return total, [by_id[sid] for sid in page_ids if sid in by_id]

    total = session.exec(select(func.count()).select_from(Server).where(*where)).one()
    page_stmt = select(*_DETAIL_COLUMNS).where(*where).order_by(*order)
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

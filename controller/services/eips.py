"""Elastic IPs: the external network's pool, allocation, binding to ports, and what each host is told.

An EIP is allocated from the pool (`LABCLOUD_EXTERNAL_CIDR` / `_POOL` / `_GATEWAY`) when it is created and held by
its project until deleted; binding puts it on one port of one of the project's servers. The host that runs the
server does the 1:1 NAT: after every change the controller sends that host (and the one that had it before) its
whole `ExternalSpec`, stamped with the controller's clock, so a host keeps the newest whatever the order of
arrival. The VPC's `enable_shared_snat` rides in the same spec. Errors use the VPC service's codes.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import ExternalSpec, FloatingIpSpec
from controller.config import Settings
from controller.errors import BadRequest, Conflict, NotFound
from controller.logs import request_id_var
from controller.models.eip import Eip
from controller.models.host import Host
from controller.models.network import Port, Vpc
from controller.models.server import Server
from controller.services import quotas
from controller.state import DELETED

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)

BAD = "VPC.0002"
EIP_NOT_FOUND = "VPC.1301"
PORT_NOT_FOUND = "VPC.1302"
EIP_IN_USE = "VPC.1303"
POOL_EXHAUSTED = "VPC.1304"
NO_EXTERNAL = "VPC.1305"
HOST_WITHOUT_EXTERNAL = "VPC.1306"
TYPES = ("5_bgp", "5_sbgp")
SHARE_TYPES = ("PER", "WHOLE")
MAX_BANDWIDTH = 2000  # Mbit/s, Huawei's ceiling for a dedicated bandwidth


# --- the pool (pure) ---


@dataclass(frozen=True)
class Pool:
    network: ipaddress.IPv4Network
    first: ipaddress.IPv4Address
    last: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address | None

    def __contains__(self, ip: ipaddress.IPv4Address) -> bool:
        return self.first <= ip <= self.last and ip != self.gateway

    def addresses(self) -> Iterable[ipaddress.IPv4Address]:
        for n in range(int(self.first), int(self.last) + 1):
            ip = ipaddress.IPv4Address(n)
            if ip != self.gateway:
                yield ip


def parse_pool(cidr: str, pool: str | None, gateway: str | None) -> Pool:
    """The pool of `cidr`: `pool` as "first-last" or a CIDR inside it, default every host address; the gateway
    is never handed out. ValueError with a readable message if the settings do not fit together."""
    network = ipaddress.IPv4Network(cidr, strict=False)
    gw = ipaddress.IPv4Address(gateway) if gateway else None
    if gw is not None and gw not in network:
        raise ValueError(f"the external gateway {gw} is outside {network}")
    if pool and "-" in pool:
        low, high = (ipaddress.IPv4Address(part.strip()) for part in pool.split("-", 1))
    elif pool:
        sub = ipaddress.IPv4Network(pool, strict=False)
        low, high = sub.network_address, sub.broadcast_address
    else:
        low, high = network.network_address + 1, network.broadcast_address - 1
    if network.prefixlen >= 31 and not pool:
        low, high = network.network_address, network.broadcast_address
    if not (low in network and high in network and low <= high):
        raise ValueError(f"the EIP pool {pool or cidr} is not a range inside {network}")
    return Pool(network=network, first=low, last=high, gateway=gw)


def configured_pool(settings: Settings) -> Pool:
    """The controller's pool, or 400 when there is no external network."""
    if not settings.external_cidr:
        raise BadRequest(
            "No external network is configured (LABCLOUD_EXTERNAL_CIDR), so there are no EIPs",
            code=NO_EXTERNAL,
        )
    try:
        return parse_pool(settings.external_cidr, settings.external_pool, settings.external_gateway)
    except ValueError as exc:
        raise BadRequest(f"The external network settings are invalid: {exc}", code=NO_EXTERNAL) from exc


# --- lifecycle ---


def get_eip(session: Session, project_id: str, eip_id: str) -> Eip:
    eip = session.get(Eip, eip_id)
    if eip is None or eip.project_id != project_id:
        raise NotFound(f"Publicip {eip_id} does not exist", code=EIP_NOT_FOUND)
    return eip


def list_eips(
    session: Session,
    project_id: str,
    *,
    ids: list[str] | None = None,
    port_ids: list[str] | None = None,
    addresses: list[str] | None = None,
    marker: str | None = None,
    limit: int | None = None,
) -> list[Eip]:
    stmt = select(Eip).where(Eip.project_id == project_id)
    if ids:
        stmt = stmt.where(col(Eip.id).in_(ids))
    if port_ids:
        stmt = stmt.where(col(Eip.port_id).in_(port_ids))
    if addresses:
        stmt = stmt.where(col(Eip.public_ip_address).in_(addresses))
    if marker:
        get_eip(session, project_id, marker)
        stmt = stmt.where(col(Eip.id) > marker)
    stmt = stmt.order_by(col(Eip.id))
    if limit:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def create_eip(
    session: Session,
    settings: Settings,
    project_id: str,
    *,
    type_: str,
    ip_address: str | None,
    ip_version: int | None,
    alias: str | None,
    bandwidth_name: str | None,
    bandwidth_size: int | None,
    share_type: str,
) -> Eip:
    """Allocate an address (the one asked for, else the lowest free) and record the EIP; 403 over quota."""
    if type_ not in TYPES:
        raise BadRequest(f"Invalid publicip type {type_!r}: use one of {', '.join(TYPES)}", code=BAD)
    if ip_version not in (None, 4):
        raise BadRequest(f"Invalid ip_version {ip_version}: only IPv4 EIPs exist here", code=BAD)
    if share_type not in SHARE_TYPES:
        raise BadRequest(f"Invalid bandwidth share_type {share_type!r}: use PER or WHOLE", code=BAD)
    size = 5 if bandwidth_size is None else bandwidth_size
    if not 1 <= size <= MAX_BANDWIDTH:
        raise BadRequest(f"Invalid bandwidth size {size}: it must be 1 to {MAX_BANDWIDTH} Mbit/s", code=BAD)
    pool = configured_pool(settings)
    if ip_address is not None:
        try:
            wanted = ipaddress.IPv4Address(ip_address)
        except ValueError:
            raise BadRequest(f"Invalid ip_address {ip_address!r}", code=BAD) from None
        if wanted not in pool:
            raise BadRequest(f"ip_address {wanted} is not in the EIP pool {pool.first}-{pool.last}", code=BAD)
        candidates: Iterable[ipaddress.IPv4Address] = [wanted]
    else:
        candidates = pool.addresses()
    # A write first: on SQLite a SAVEPOINT outside a transaction would commit on its own (see quotas).
    quotas.lock_project(session, project_id)
    used = set(session.exec(select(Eip.public_ip_address)).all())
    for ip in candidates:
        if str(ip) in used:
            continue
        eip = Eip(
            project_id=project_id,
            public_ip_address=str(ip),
            type=type_,
            alias=alias,
            bandwidth_name=bandwidth_name or "",
            bandwidth_size=size,
            bandwidth_share_type=share_type,
        )
        try:
            with session.begin_nested():
                session.add(eip)
        except IntegrityError:
            continue  # another request took it in the meantime
        quotas.check_added(session, settings, project_id, "eips")
        log.info("EIP %s (%s) allocated to project %s", eip.id, eip.public_ip_address, project_id)
        return eip
    if ip_address is not None:
        raise Conflict(f"ip_address {ip_address} is already in use", code=EIP_IN_USE)
    raise Conflict("The EIP pool is exhausted", code=POOL_EXHAUSTED)


def bind(session: Session, project_id: str, eip: Eip, port_id: str | None) -> tuple[str | None, str | None]:
    """Bind the EIP to `port_id` (None: unbind); returns (the port it had, the port it has) for the pushes."""
    before = eip.port_id
    if port_id == before:
        return before, before
    if port_id is not None and before is not None:
        raise Conflict(
            f"Publicip {eip.id} is already bound to port {before}; unbind it first", code=EIP_IN_USE
        )
    if port_id is not None:
        port = session.get(Port, port_id)
        if port is None or port.project_id != project_id or port.server_id is None:
            raise NotFound(f"Port {port_id} does not exist", code=PORT_NOT_FOUND)
        taken = session.exec(select(Eip).where(Eip.port_id == port_id)).first()
        if taken is not None:
            raise Conflict(f"Port {port_id} already has the EIP {taken.public_ip_address}", code=EIP_IN_USE)
        _check_host_has_external(session, port)
    eip.port_id = port_id
    if port_id is None:
        eip.delete_on_termination = False  # it belonged to that server's life only while bound to it
    session.add(eip)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"Port {port_id} already has an EIP", code=EIP_IN_USE) from None
    log.info("EIP %s (%s): port %s -> %s", eip.id, eip.public_ip_address, before, port_id)
    return before, port_id


def _check_host_has_external(session: Session, port: Port) -> None:
    """409 when the port's server runs on a host without an external network: the EIP would never work there.
    A server not placed yet passes (its create pushes the host its EIPs once it runs)."""
    server = session.get(Server, port.server_id) if port.server_id else None
    if server is None or server.host_id is None:
        return
    host = session.get(Host, server.host_id)
    if host is None or not host.external_ip:
        raise Conflict(
            f"Port {port.id} is on host {server.host_id}, which has no external network "
            "(LABCLOUD_AGENT_EXTERNAL_DEV / _EXTERNAL_IP): an EIP cannot work there",
            code=HOST_WITHOUT_EXTERNAL,
        )


def delete_eip(session: Session, project_id: str, eip_id: str) -> None:
    eip = get_eip(session, project_id, eip_id)
    if eip.port_id is not None:
        raise Conflict(f"Publicip {eip_id} is bound to port {eip.port_id}; unbind it first", code=EIP_IN_USE)
    session.delete(eip)
    session.flush()
    log.info("EIP %s (%s) released", eip.id, eip.public_ip_address)


def release_for_server(session: Session, server_id: str, *, delete: bool) -> list[str]:
    """Unbind the EIPs of a server's ports (it is being deleted), and delete them with `delete`
    (`delete_publicip`) or when a create bound them with `delete_on_termination`; returns their addresses."""
    ports = select(Port.id).where(Port.server_id == server_id)
    eips = list(session.exec(select(Eip).where(col(Eip.port_id).in_(ports))).all())
    for eip in eips:
        if delete or eip.delete_on_termination:
            session.delete(eip)
            log.info("server %s: EIP %s released", server_id, eip.public_ip_address)
        else:
            eip.port_id = None
            session.add(eip)
            log.info("server %s: EIP %s unbound", server_id, eip.public_ip_address)
    session.flush()
    return [e.public_ip_address for e in eips]


# --- what hosts are told ---


def port_host(session: Session, port_id: str | None) -> str | None:
    if port_id is None:
        return None
    row = session.exec(
        select(Server.host_id).join(Port, col(Port.server_id) == col(Server.id)).where(Port.id == port_id)
    ).first()
    return row or None


def external_spec(session: Session, host_id: str) -> ExternalSpec:
    """Every EIP bound to a port of a live server on `host_id`, and the host's VPCs with shared SNAT on."""
    live = (Server.host_id == host_id, Server.status != DELETED)
    rows = session.exec(
        select(Eip.public_ip_address, Port.id, Port.vpc_id, Port.ip_address)
        .join(Port, col(Port.id) == col(Eip.port_id))
        .join(Server, col(Server.id) == col(Port.server_id))
        .where(*live)
    ).all()
    vpcs = session.exec(
        select(Vpc.id)
        .distinct()
        .join(Port, col(Port.vpc_id) == col(Vpc.id))
        .join(Server, col(Server.id) == col(Port.server_id))
        .where(*live, col(Vpc.enable_shared_snat).is_(True))
    ).all()
    return ExternalSpec(
        version=time.time_ns(),
        floating_ips=[
            FloatingIpSpec(eip=eip, port_id=port_id, vpc_id=vpc_id, fixed_ip=ip)
            for eip, port_id, vpc_id, ip in sorted(rows)
        ],
        snat_vpcs=sorted(vpcs),
    )


def vpc_hosts(session: Session, vpc_id: str) -> list[str]:
    rows = session.exec(
        select(Server.host_id)
        .distinct()
        .join(Port, col(Port.server_id) == col(Server.id))
        .where(Port.vpc_id == vpc_id, Server.status != DELETED, col(Server.host_id).is_not(None))
    ).all()
    return sorted(h for h in rows if h)


def push_external(ctx: ControllerContext, host_ids: Iterable[str | None]) -> None:
    """Send each host its whole external spec. Best effort: the change is committed; a host that misses a push
    gets the current spec with the next one (every server create on an external network pushes too)."""
    if not ctx.settings.external_cidr:
        return
    wanted = sorted({h for h in host_ids if h})
    try:
        with Session(ctx.engine) as session:
            hosts = session.exec(select(Host).where(col(Host.id).in_(wanted))).all()
            pushes = [(host, external_spec(session, host.id)) for host in hosts]
    except Exception:
        log.exception("computing the external specs of hosts %s failed", wanted)
        return
    for host, spec in pushes:
        try:
            ctx.agents.for_host(host).put_external(spec, request_id=request_id_var.get())
        except AgentClientError as exc:
            log.warning("pushing the external spec to host %s failed: %s", host.id, exc)
        else:
            log.info(
                "host %s: %d EIPs, SNAT for %s", host.id, len(spec.floating_ips), spec.snat_vpcs or "no VPC"
            )

"""The VXLAN overlay of VPCs: which hosts a VPC spans, what each of them must know about the others, the pushes.

A VPC's VNI is allocated with the VPC (`networks.create_vpc`, unique in the database). A host takes part in a
VPC while a server placed on it (not deleted) has a port there. Each such host gets, in every `NetworkSpec` and
in every push, an `OverlaySpec`: the underlay addresses of the *other* hosts of the VPC (its flood list) and the
ports behind them (static neighbours for its router, whose own ARP must not cross the tunnel). When a server is
placed or goes away, every host of its project's VPCs is sent its new view, stamped with the controller's clock
so a host keeps the newest one whatever the order of arrival.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import OverlaySpec, RemotePort
from controller.logs import request_id_var
from controller.models.host import Host
from controller.models.network import Port, Vpc
from controller.models.server import Server
from controller.state import DELETED

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlacedPort:
    """A port of a VPC and the host its server is placed on."""

    host_id: str
    ip: str
    mac: str


# --- pure ---


def overlay_for(
    host_id: str | None, placed: Iterable[PlacedPort], underlay: Mapping[str, str | None], version: int
) -> OverlaySpec:
    """What `host_id` must know about the rest of a VPC: the other hosts' VTEPs and the ports behind them.

    Hosts without an underlay address (single-host installs) are nobody's peer; a host never peers with its
    own address.
    """
    own = underlay.get(host_id) if host_id else None
    remote = [p for p in placed if p.host_id != host_id]
    peers = {underlay.get(p.host_id) for p in remote}
    return OverlaySpec(
        version=version,
        peers=sorted((ip for ip in peers if ip and ip != own), key=ipaddress.IPv4Address),
        remote_ports=[
            RemotePort(ip=p.ip, mac=p.mac)
            for p in sorted(remote, key=lambda p: (ipaddress.IPv4Address(p.ip), p.mac))
        ],
    )


def hosts_of(placed: Iterable[PlacedPort]) -> list[str]:
    return sorted({p.host_id for p in placed})


def now_version() -> int:
    return time.time_ns()


# --- database ---


def placed_ports(session: Session, vpc_id: str) -> list[PlacedPort]:
    """Every port of the VPC whose server is placed on a host and not deleted."""
    rows = session.exec(
        select(Server.host_id, Port.ip_address, Port.mac_address)
        .join(Server, col(Server.id) == col(Port.server_id))
        .where(Port.vpc_id == vpc_id, col(Server.host_id).is_not(None), Server.status != DELETED)
    ).all()
    return [PlacedPort(host_id=host_id, ip=ip, mac=mac) for host_id, ip, mac in rows if host_id]


def underlay_addresses(session: Session, host_ids: Iterable[str]) -> dict[str, str | None]:
    ids = list(host_ids)
    if not ids:
        return {}
    hosts = session.exec(select(Host).where(col(Host.id).in_(ids))).all()
    return {h.id: h.underlay_ip for h in hosts}


def overlay_spec(session: Session, vpc_id: str, host_id: str | None) -> OverlaySpec:
    """The overlay part of the `NetworkSpec` that `host_id` gets for this VPC."""
    placed = placed_ports(session, vpc_id)
    return overlay_for(host_id, placed, underlay_addresses(session, hosts_of(placed)), now_version())


# --- pushes ---


def push_project_overlays(ctx: ControllerContext, project_id: str) -> None:
    """Send every host of the project's VPCs its current view of each (after a server came or went).

    Best effort, like security-group pushes: the change is committed, and a host that misses a push gets the
    current view with its next server spec, or from the reconciler (`overlay_repair`) within a pass or two.
    """
    try:
        with Session(ctx.engine) as session:
            vpc_ids = session.exec(select(Vpc.id).where(Vpc.project_id == project_id)).all()
            pushes: list[tuple[Host, str, OverlaySpec]] = []
            for vpc_id in vpc_ids:
                placed = placed_ports(session, vpc_id)
                host_ids = hosts_of(placed)
                underlay = underlay_addresses(session, host_ids)
                if not any(underlay.values()):
                    continue  # no host of this VPC has an overlay (single-host installs)
                version = now_version()
                hosts = session.exec(select(Host).where(col(Host.id).in_(host_ids))).all()
                for host in hosts:
                    if host.underlay_ip:
                        pushes.append((host, vpc_id, overlay_for(host.id, placed, underlay, version)))
    except Exception:
        log.exception("computing the overlays of project %s failed", project_id)
        return
    for host, vpc_id, spec in pushes:
        try:
            ctx.agents.for_host(host).put_overlay(vpc_id, spec, request_id=request_id_var.get())
        except AgentClientError as exc:
            log.warning("pushing the overlay of VPC %s to host %s failed: %s", vpc_id, host.id, exc)
        else:
            log.info("vpc %s: host %s floods to %s", vpc_id, host.id, spec.peers or "nobody")

"""Pushing a changed VPC (its subnets' DNS servers, DHCP on or off, its CIDR) to the hosts that serve it.

Agents learn a VPC's network with every server spec; a change to a subnet or the VPC itself must reach the
hosts whose servers already use it, whose dnsmasq would otherwise keep the old options until the next server
there is created. Each host with a placed server in the VPC gets its whole `NetworkSpec` (with its own overlay
view) at `PUT /v1/networks/{vpc}`; the agent stores it in those servers' specs too, so a restart keeps it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import NetworkSpec
from controller.logs import request_id_var
from controller.models.host import Host
from controller.services import networks, overlay

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)


def push_network(ctx: ControllerContext, vpc_id: str) -> list[str]:
    """Send the VPC's current network to every host with a server in it; returns the hosts that took it.

    Best effort, after the change is committed: a host that misses the push is logged, and gets the new
    network with the next server spec of that VPC it is sent.
    """
    try:
        with Session(ctx.engine) as session:
            host_ids = overlay.hosts_of(overlay.placed_ports(session, vpc_id))
            if not host_ids:
                return []
            hosts = session.exec(select(Host).where(col(Host.id).in_(host_ids))).all()
            pushes: list[tuple[Host, NetworkSpec]] = [
                (host, networks.network_spec(session, vpc_id, host.id)) for host in hosts
            ]
    except Exception:
        log.exception("computing the network of VPC %s for its hosts failed", vpc_id)
        return []
    done = []
    for host, spec in pushes:
        try:
            ctx.agents.for_host(host).put_network(spec, request_id=request_id_var.get())
        except AgentClientError as exc:
            log.warning("pushing the network of VPC %s to host %s failed: %s", vpc_id, host.id, exc)
        else:
            done.append(host.id)
            log.info("vpc %s: pushed %d subnets to host %s", vpc_id, len(spec.subnets), host.id)
    return done

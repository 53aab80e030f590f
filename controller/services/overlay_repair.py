"""Self-healing VPC overlays: a host whose overlay view differs from the one it should have gets a fresh push.

The pushes after a server comes or goes (`overlay.push_project_overlays`) are best effort: a host whose agent
was down at the time, or an agent restarted from stale stored specs, keeps an old flood list. So every host
reports, in its host info, a digest of the view it applies per VPC network (`HostInfo.overlays`), and each
reconciler pass (every `reconcile_seconds`) compares those with the views the database says the hosts should
have and pushes the current view wherever they differ. A converged host costs one digest per VPC and no push.

A host that still has a VPC's network but no port in it any more (the network lingers for a while after its
last port went) should flood to nobody: the other hosts have already dropped it from their lists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlmodel import Session

from agent.client import AgentClientError
from agent.schemas import OverlaySpec
from controller.models.host import Host
from controller.models.network import Vpc
from controller.services.overlay import hosts_of, now_version, overlay_for, placed_ports, underlay_addresses

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)


def desired_view(session: Session, vpc_id: str, host_id: str, version: int) -> OverlaySpec:
    """The overlay view `host_id` should apply for the VPC, stamped `version`."""
    placed = placed_ports(session, vpc_id)
    if not any(p.host_id == host_id for p in placed):
        placed = []  # no port of the VPC here: flood to nobody
    return overlay_for(host_id, placed, underlay_addresses(session, hosts_of(placed)), version)


def stale_views(session: Session, host_id: str, reported: Mapping[str, str]) -> dict[str, OverlaySpec]:
    """The VPCs whose reported view digest differs from the desired view, with the view to push.

    The stamp is taken *before* the database is read: a push a job computes from a later read always carries
    a later stamp, so a repair racing a server create or delete can never replace the newer view on the host.
    """
    version = now_version()
    stale: dict[str, OverlaySpec] = {}
    for vpc_id, digest in sorted(reported.items()):
        if session.get(Vpc, vpc_id) is None:
            continue  # a deleted VPC: its network on the host goes with its idle timeout
        want = desired_view(session, vpc_id, host_id, version)
        if want.digest() != digest:
            stale[vpc_id] = want
    return stale


def repair_host(ctx: ControllerContext, host: Host, reported: Mapping[str, str]) -> list[str]:
    """Push the current view of every VPC whose view on `host` is stale; returns the VPCs pushed."""
    if not host.underlay_ip or not reported:
        return []
    with Session(ctx.engine) as session:
        stale = stale_views(session, host.id, reported)
    pushed = []
    for vpc_id, spec in stale.items():
        try:
            ctx.agents.for_host(host).put_overlay(vpc_id, spec)
        except AgentClientError as exc:
            log.warning(
                "vpc %s: host %s has a stale overlay view; the repair push failed: %s", vpc_id, host.id, exc
            )
            continue
        pushed.append(vpc_id)
        log.warning(
            "vpc %s: host %s had a stale overlay view (%s); pushed the current one, flooding to %s",
            vpc_id,
            host.id,
            reported[vpc_id],
            spec.peers or "nobody",
        )
    return pushed

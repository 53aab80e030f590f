"""Self-healing security groups: a host whose copy of a group (rules, members) is stale gets the group again.

Group changes reach hosts by best-effort pushes (`servers.push_security_groups`): a host whose agent was down
when a server joined or left a group keeps the old member list in its ipsets, so a departed server's address
(which may go to another server next) stays admitted. Every host reports, in its host info, a digest of each
group its stored specs hold (`HostInfo.security_groups`); each reconciler pass compares them with the groups'
current state and pushes the whole current spec of every stale one (`PUT /v1/security-groups`, which the agent
applies to every stored spec using the group, then to the kernel).

Group pushes carry no version, so a repair computed just before a concurrent change and landing just after
that change's own push would put the older state back; the next pass (seconds later) corrects it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import SecurityGroupSpec
from controller.logs import request_id_var
from controller.models.host import Host
from controller.models.network import SecurityGroup
from controller.services.networks import security_group_specs

if TYPE_CHECKING:
    from controller.context import ControllerContext

log = logging.getLogger(__name__)


def stale_groups(session: Session, reported: Mapping[str, str]) -> list[SecurityGroupSpec]:
    """The current specs of the reported groups whose digest differs (groups deleted since are left alone:
    the host drops them with the last port using them)."""
    existing = session.exec(select(SecurityGroup.id).where(col(SecurityGroup.id).in_(list(reported)))).all()
    if not existing:
        return []
    current = {spec.id: spec for spec in security_group_specs(session, sorted(existing))}
    return [
        spec for gid, spec in sorted(current.items()) if gid in reported and spec.digest() != reported[gid]
    ]


def repair_host(ctx: ControllerContext, host: Host, reported: Mapping[str, str]) -> list[str]:
    """Push the current state of every group `host` holds a stale copy of; returns the groups pushed."""
    if not reported:
        return []
    with Session(ctx.engine) as session:
        stale = stale_groups(session, reported)
    if not stale:
        return []
    ids = [spec.id for spec in stale]
    try:
        ctx.agents.for_host(host).put_security_groups(stale, request_id=request_id_var.get())
    except AgentClientError as exc:
        log.warning("host %s holds stale security groups %s; the repair push failed: %s", host.id, ids, exc)
        return []
    log.warning("host %s held stale security groups %s; pushed their current rules and members", host.id, ids)
    return ids

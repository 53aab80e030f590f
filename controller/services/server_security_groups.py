"""Changing the security groups of an existing server (Nova's `addSecurityGroup` / `removeSecurityGroup`).

The server and every one of its ports get the new group list; the server's host is sent the whole server spec
again (`put_server` is idempotent: for a running server it only re-syncs the firewall), and every other host
filtering with one of the changed groups gets the new member lists for its ipsets. If the server's host cannot
be told, the database change is undone and the call fails, so the API never reports groups the host does not
enforce.
"""

from __future__ import annotations

import logging

from sqlmodel import Session, select

from agent.client import AgentClientError
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import ApiError, BadRequest, Conflict, NotFound
from controller.logs import request_id_var
from controller.models.host import Host
from controller.models.network import SecurityGroup
from controller.models.server import Server
from controller.services import networks, servers
from controller.state import ACTIVE, SHUTOFF

log = logging.getLogger(__name__)

CHANGEABLE = (ACTIVE, SHUTOFF)


def find_group(session: Session, project_id: str, name_or_id: str) -> SecurityGroup:
    """A group of the project by id, else by name (Nova passes names); 404 if none, 409 if the name is shared."""
    group = session.get(SecurityGroup, name_or_id)
    if group is not None and group.project_id == project_id:
        return group
    named = session.exec(
        select(SecurityGroup).where(SecurityGroup.project_id == project_id, SecurityGroup.name == name_or_id)
    ).all()
    if not named:
        raise NotFound(f"Security group {name_or_id} not found", code=networks.SG_NOT_FOUND)
    if len(named) > 1:
        raise Conflict(
            f"Multiple security groups are named {name_or_id}; use the id", code=networks.SG_IN_USE
        )
    return named[0]


def server_groups(ctx: ControllerContext, project_id: str, server_id: str) -> list[SecurityGroup]:
    with session_scope(ctx.engine) as session:
        server = servers.get_server(session, project_id, server_id)
        found = [session.get(SecurityGroup, gid) for gid in server.security_group_ids]
        return [group for group in found if group is not None]


def change_groups(
    ctx: ControllerContext,
    project_id: str,
    server_id: str,
    *,
    add: str | None = None,
    remove: str | None = None,
) -> None:
    """Add or remove one group of a server and make its host (and the group's other hosts) enforce it."""
    with session_scope(ctx.engine) as session:
        server = servers.get_server(session, project_id, server_id)
        group = find_group(session, project_id, add or remove or "")
        before = list(server.security_group_ids)
        if server.status not in CHANGEABLE:
            raise Conflict(
                f"Cannot change the security groups of server {server_id} while it is {server.status}"
            )
        if add is not None:
            if group.id in before:
                raise BadRequest(f"Security group {group.name} is already associated with the server")
            after = [*before, group.id]
        else:
            if group.id not in before:
                raise BadRequest(f"Security group {group.name} is not associated with the server")
            if len(before) == 1:
                raise BadRequest("A server keeps at least one security group")
            after = [gid for gid in before if gid != group.id]
        _set_groups(session, server, after)
        host_id = server.host_id
    try:
        _tell_host(ctx, server_id, host_id)
    except ApiError:
        with session_scope(ctx.engine) as session:
            _set_groups(session, servers.get_server(session, project_id, server_id), before)
        raise
    log.info(
        "server %s: security group %s %s", server_id, group.id, "added" if add is not None else "removed"
    )
    # Other hosts with servers in this group hold its members in an ipset: the server came or went.
    networks.notify_security_groups(ctx, [group.id])


def _set_groups(session: Session, server: Server, group_ids: list[str]) -> None:
    server.security_group_ids = list(group_ids)
    session.add(server)
    for port in servers.server_ports(session, server.id):
        port.security_group_ids = list(group_ids)
        session.add(port)
    session.flush()


def _tell_host(ctx: ControllerContext, server_id: str, host_id: str | None) -> None:
    if host_id is None:
        return
    with session_scope(ctx.engine) as session:
        server = session.get(Server, server_id)
        host = session.get(Host, host_id)
        if server is None or host is None:
            return
        spec = servers.build_server_spec(session, server, ctx.settings)
    try:
        ctx.agents.for_host(host).put_server(spec, request_id=request_id_var.get())
    except AgentClientError as exc:
        log.warning("server %s: host %s did not take the new security groups: %s", server_id, host_id, exc)
        raise Conflict(
            f"Host {host_id} of server {server_id} could not apply the security groups ({exc}); "
            "nothing was changed, try again"
        ) from None

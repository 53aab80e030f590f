"""Server groups: create, list, show, delete, members joined at create time, and the anti-affinity rule the
scheduler applies (`controller.scheduler.AntiAffinity`).

Only the anti-affinity policy is offered, as on Huawei ECS. The hosts a group occupies are read inside the
placement transaction (`services.servers.claim_host`), which first locks the group row, so two members placed at
the same time still land on different hosts.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlmodel import Session, col, delete, select

from controller.errors import BadRequest, NotFound
from controller.models.server import Server
from controller.models.server_group import ANTI_AFFINITY, ServerGroup, ServerGroupMember
from controller.scheduler import AntiAffinity
from controller.state import DELETED

log = logging.getLogger(__name__)

NAME_MAX = 255
POLICIES = (ANTI_AFFINITY,)


def create_group(session: Session, project_id: str, name: str, policies: list[str]) -> ServerGroup:
    if not name.strip() or len(name) > NAME_MAX:
        raise BadRequest(f"Invalid server group name: 1 to {NAME_MAX} characters, not only spaces")
    if len(policies) != 1 or policies[0] not in POLICIES:
        raise BadRequest(f"Invalid policies {policies}: exactly one of {', '.join(POLICIES)} is supported")
    group = ServerGroup(project_id=project_id, name=name, policies=list(policies))
    session.add(group)
    session.flush()
    log.info("server group %s (%s) created in project %s", group.id, policies[0], project_id)
    return group


def get_group(session: Session, project_id: str, group_id: str) -> ServerGroup:
    group = session.get(ServerGroup, group_id)
    if group is None or group.project_id != project_id:
        raise NotFound(f"Server group {group_id} could not be found.")
    return group


def list_groups(
    session: Session, project_id: str, *, marker: str | None = None, limit: int | None = None
) -> list[ServerGroup]:
    """Oldest first; `marker` is the id of the last group of the previous page."""
    stmt = select(ServerGroup).where(ServerGroup.project_id == project_id)
    if marker:
        last = session.get(ServerGroup, marker)
        if last is None or last.project_id != project_id:
            raise BadRequest(f"Invalid marker {marker!r}: no such server group")
        stmt = stmt.where(
            (col(ServerGroup.created_at) > last.created_at)
            | ((col(ServerGroup.created_at) == last.created_at) & (col(ServerGroup.id) > last.id))
        )
    stmt = stmt.order_by(col(ServerGroup.created_at), col(ServerGroup.id))
    if limit:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def delete_group(session: Session, project_id: str, group_id: str) -> None:
    """As in Nova, a group with members can be deleted; its members stay where they are."""
    group = get_group(session, project_id, group_id)
    gone = delete(ServerGroupMember).where(col(ServerGroupMember.group_id) == group.id)
    session.exec(gone)  # type: ignore[call-overload]
    session.delete(group)
    session.flush()
    log.info("server group %s deleted from project %s", group_id, project_id)


def members(session: Session, group_ids: list[str]) -> dict[str, list[str]]:
    """The live (not deleted) member server ids of each group, oldest server first."""
    found: dict[str, list[str]] = defaultdict(list)
    if not group_ids:
        return found
    rows = session.exec(
        select(ServerGroupMember.group_id, Server.id)
        .join(Server, col(Server.id) == col(ServerGroupMember.server_id))
        .where(col(ServerGroupMember.group_id).in_(group_ids), Server.status != DELETED)
        .order_by(col(Server.created_at), col(Server.id))
    ).all()
    for group_id, server_id in rows:
        found[group_id].append(server_id)
    return found


def add_members(session: Session, project_id: str, group_id: str, server_ids: list[str]) -> None:
    """Join new servers to a group (from `os:scheduler_hints.group` at create)."""
    group = session.get(ServerGroup, group_id)
    if group is None or group.project_id != project_id:
        raise BadRequest(f"Invalid os:scheduler_hints.group {group_id!r}: no such server group")
    for server_id in server_ids:
        session.add(ServerGroupMember(server_id=server_id, group_id=group_id))
    session.flush()


def anti_affinity_for(session: Session, server_id: str) -> AntiAffinity | None:
    """The server's anti-affinity group with the hosts its other live members hold, or None."""
    member = session.get(ServerGroupMember, server_id)
    if member is None:
        return None
    group = session.get(ServerGroup, member.group_id)
    if group is None or ANTI_AFFINITY not in group.policies:
        return None
    hosts = session.exec(
        select(Server.host_id)
        .join(ServerGroupMember, col(ServerGroupMember.server_id) == col(Server.id))
        .where(
            ServerGroupMember.group_id == group.id,
            Server.id != server_id,
            Server.status != DELETED,
            col(Server.host_id).is_not(None),
        )
        .distinct()
    ).all()
    return AntiAffinity(group.id, frozenset(h for h in hosts if h is not None))

"""Servers after creation: lookups, batch delete/start/stop/reboot, placement, agent specs, group pushes.

Every batch operation starts with compare-and-swap UPDATEs from the transition table (`controller.state`) for
all its servers in one transaction: either every server moves into its task, or none does and the caller gets
409. The jobs that carry the operation out land each server in the table's outcome.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import DateTime, type_coerce, update
from sqlmodel import Session, col, select

from agent.client import AgentCallError, AgentClientError, AgentUnreachable
from agent.schemas import PortSpec, ServerSpec
from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import ApiError, Conflict, NotFound
from controller.jobs.queue import new_job
from controller.logs import request_id_var
from controller.models.common import utcnow
from controller.models.host import Host
from controller.models.job import Job
from controller.models.network import Port, SecurityGroup, SecurityGroupRule
from controller.models.server import Server
from controller.models.server_group import ServerGroup, ServerGroupMember
from controller.scheduler import AntiAffinity, HostCandidate, NoValidHost, PlacementRequest, schedule
from controller.services import flavors, host_usage, image_store, keypairs, networks, server_groups
from controller.services.image_needs import image_accelerator
from controller.services.scheduler_policy import scheduler_policy
from controller.services.server_views import hostname_of
from controller.state import DELETED, SHUTOFF, refusal, transition

log = logging.getLogger(__name__)

# Job kinds: a batch parent and one sub-job per server.
DELETE_JOB, DELETE_ONE_JOB = "deleteServers", "deleteSingleServer"
BATCH_JOBS = {
    "start": ("batchStartServers", "startSingleServer"),
    "stop": ("batchStopServers", "stopSingleServer"),
    "reboot": ("batchRebootServers", "rebootSingleServer"),
}

# Error codes: Huawei's where documented (Ecs.0114, Ecs.0104), labcloud's own for job faults.
SERVER_NOT_FOUND = "Ecs.0114"
SERVER_BUSY = "Ecs.0104"
NO_VALID_HOST = "Ecs.0209"
AGENT_FAILED = "Ecs.0210"
AGENT_UNREACHABLE = "Ecs.0211"
SPEC_FAILED = "Ecs.0212"  # a reference of the server (image, key pair…) went away before it was built


def not_found(server_id: str) -> NotFound:
    return NotFound(f"Instance[{server_id}] could not be found.", code=SERVER_NOT_FOUND)


def get_server(session: Session, project_id: str, server_id: str) -> Server:
    """A live server of the project; deleted, unknown and foreign servers are all 404."""
    server = session.get(Server, server_id)
    if server is None or server.project_id != project_id or server.status == DELETED:
        raise not_found(server_id)
    return server


def get_servers(session: Session, project_id: str, server_ids: list[str]) -> list[Server]:
    """All of them in request order (duplicates dropped), or 404 naming the first that is missing."""
    wanted = list(dict.fromkeys(server_ids))
    rows = session.exec(
        select(Server).where(
            col(Server.id).in_(wanted), Server.project_id == project_id, Server.status != DELETED
        )
    ).all()
    found = {s.id: s for s in rows}
    for sid in wanted:
        if sid not in found:
            raise not_found(sid)
    return [found[sid] for sid in wanted]


def server_ports(session: Session, server_id: str) -> list[Port]:
    stmt = select(Port).where(Port.server_id == server_id).order_by(col(Port.created_at), col(Port.id))
    return list(session.exec(stmt).all())


# --- batch operations: CAS into the task, then jobs ---


def begin_transition(session: Session, servers: list[Server], action: str) -> None:
    """Move every server into `action`'s task, or raise 409 (the caller's transaction then rolls back)."""
    t = transition(action)
    now = utcnow()
    values: dict[str, object] = {"task_state": t.task_state, "updated_at": now}
    if t.during is not None:
        values["status"] = t.during
    for server in servers:
        stmt = (
            update(Server)
            .where(col(Server.id) == server.id)
            .where(col(Server.status).in_(t.allowed_from), col(Server.task_state).is_(None))
            .values(**values)
        )
        if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
            status, task = session.exec(
                select(Server.status, Server.task_state).where(Server.id == server.id)
            ).one()
            reason = refusal(status, task, action) or f"its state changed to {status}"
            raise Conflict(f"Instance[{server.id}]: {reason}.", code=SERVER_BUSY)


def delete_servers(
    ctx: ControllerContext,
    project_id: str,
    server_ids: list[str],
    request_id: str,
    *,
    delete_volume: bool = False,
    delete_publicip: bool = False,
) -> str:
    """Delete the servers; with `delete_volume` their attached data volumes go too, else they become available;
    with `delete_publicip` the EIPs bound to them are released, else unbound."""
    with session_scope(ctx.engine) as session:
        servers = get_servers(session, project_id, server_ids)
        begin_transition(session, servers, "delete")
        parent = new_job(project_id, DELETE_JOB, request_id=request_id)
        session.add(parent)
        for server in servers:
            payload = {
                "server_id": server.id,
                "from_status": server.status,
                "delete_volume": delete_volume,
                "delete_publicip": delete_publicip,
            }
            session.add(_sub_job(project_id, DELETE_ONE_JOB, parent.id, payload, request_id))
    log.info("deleting servers %s (job %s)", [s.id for s in servers], parent.id)
    ctx.kick_jobs()
    return parent.id


def batch_action(
    ctx: ControllerContext,
    project_id: str,
    verb: str,
    server_ids: list[str],
    kind: str | None,
    request_id: str,
) -> str:
    """`verb` is start, stop or reboot; `kind` SOFT (default) or HARD."""
    hard = kind == "HARD"
    action = {"start": "start", "stop": "stop", "reboot": "reboot_hard" if hard else "reboot_soft"}[verb]
    parent_kind, child_kind = BATCH_JOBS[verb]
    with session_scope(ctx.engine) as session:
        servers = get_servers(session, project_id, server_ids)
        begin_transition(session, servers, action)
        parent = new_job(project_id, parent_kind, request_id=request_id)
        session.add(parent)
        for server in servers:
            payload = {
                "server_id": server.id,
                "action": action,
                "type": "HARD" if hard else "SOFT",
                "from_status": server.status,
            }
            session.add(_sub_job(project_id, child_kind, parent.id, payload, request_id))
    log.info(
        "%s servers %s (%s, job %s)", verb, [s.id for s in servers], "HARD" if hard else "SOFT", parent.id
    )
    ctx.kick_jobs()
    return parent.id


def _sub_job(project_id: str, kind: str, parent_id: str, payload: dict[str, object], request_id: str) -> Job:
    return new_job(
        project_id,
        kind,
        parent_id=parent_id,
        payload=payload,
        entities={"server_id": payload["server_id"]},
        request_id=request_id,
    )


# --- placement ---


@dataclass(frozen=True)
class Claim:
    host_id: str | None
    no_valid_host: NoValidHost | None = None


def claim_host(ctx: ControllerContext, server_id: str, *, any_zone: bool) -> Claim:
    """Choose a host for the server and record it, unless it already has one.

    The hosts are read with their usage counters (`services.host_usage`) and the claim is added to the chosen
    host by a conditional UPDATE that only succeeds while the host still has room: if a concurrent claim took
    that room first, the server is scheduled again on fresh counters, and the last attempt locks every host row
    so it cannot lose again. On SQLite the first statement (the server row's write) takes the database write
    lock, so claims are serialised anyway. Members of an anti-affinity group are placed one at a time (the
    group row is locked), so each sees the hosts the others took.
    """
    settings = ctx.settings
    with session_scope(ctx.engine) as session:
        stmt = (
            update(Server)
            .where(col(Server.id) == server_id, col(Server.host_id).is_(None))
            .values(updated_at=utcnow())
        )
        if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
            current = session.exec(select(Server.host_id).where(Server.id == server_id)).first()
            return Claim(host_id=current)
        server = session.get(Server, server_id)
        assert server is not None
        flavor = flavors.get_flavor(session, server.flavor_id, include_disabled=True)
        request = PlacementRequest(
            vcpus=flavor.vcpus,
            ram_mib=flavor.ram_mib,
            disk_gib=server.root_volume_size,
            availability_zone=None if any_zone else server.availability_zone,
            anti_affinity=_anti_affinity_locked(session, server_id),
            accelerator=image_accelerator(session, server.image_id),
        )
        policy = scheduler_policy(settings)
        need = host_usage.Usage(flavor.vcpus, flavor.ram_mib, server.root_volume_size, 1)
        for attempt in range(CLAIM_ATTEMPTS):
            # Core rows rather than ORM objects: building 1,000 Host entities was most of a claim's time.
            hosts_stmt = select(*_CANDIDATE_COLUMNS)
            if attempt == CLAIM_ATTEMPTS - 1:
                hosts_stmt = hosts_stmt.with_for_update()
            hosts = list(session.connection().execute(hosts_stmt).all())
            result = schedule(request, host_candidates(hosts), policy)
            if isinstance(result, NoValidHost):
                return Claim(host_id=None, no_valid_host=result)
            if host_usage.take(session, result, need, policy):
                break
            log.info(
                "server %s: a concurrent claim took the room on host %s; scheduling again", server_id, result
            )
        else:
            reason = "its room was taken by concurrent claims while this one was placed"
            return Claim(host_id=None, no_valid_host=NoValidHost({result: reason}))
        server.host_id = result
        chosen = next(h for h in hosts if h.id == result)
        server.availability_zone = chosen.availability_zone
        session.add(server)
    log.info("server %s placed on host %s", server_id, result)
    return Claim(host_id=result)


# A few attempts suffice: an attempt only loses to a claim that won.
CLAIM_ATTEMPTS = 5

_CANDIDATE_COLUMNS = (
    Host.id,
    Host.availability_zone,
    Host.enabled,
    # The driver's own datetime parsing, without SQLModel's per-value timezone step (1,000 per claim).
    type_coerce(Host.last_heartbeat, DateTime()).label("last_heartbeat"),
    Host.vcpus,
    Host.memory_mib,
    Host.disk_gib,
    Host.accelerator,
    Host.claimed_vcpus,
    Host.claimed_ram_mib,
    Host.claimed_disk_gib,
    Host.claimed_servers,
)


def _anti_affinity_locked(session: Session, server_id: str) -> AntiAffinity | None:
    """The server's anti-affinity constraint, read with its group row locked until the claim commits."""
    session.exec(
        select(ServerGroup.id)
        .join(ServerGroupMember, col(ServerGroupMember.group_id) == col(ServerGroup.id))
        .where(ServerGroupMember.server_id == server_id)
        .with_for_update(of=ServerGroup)  # type: ignore[arg-type]
    ).all()
    return server_groups.anti_affinity_for(session, server_id)


def host_candidates(hosts: Sequence[Any]) -> list[HostCandidate]:
    """Hosts with what the servers that claim them use (their `claimed_*` counters).

    `hosts` are rows of `_CANDIDATE_COLUMNS` or Host objects. Rows are unpacked in one step: at 1,000 hosts
    per claim, reading them attribute by attribute cost more than the scheduling."""
    now = utcnow()
    naive_now = now.replace(tzinfo=None)  # SQLite gives naive UTC timestamps, PostgreSQL aware ones
    if hosts and isinstance(hosts[0], Host):
        hosts = [tuple(getattr(host, column.key) for column in _CANDIDATE_COLUMNS) for host in hosts]
    candidates = []
    for host in hosts:
        (host_id, zone, enabled, heartbeat, vcpus, memory_mib, disk_gib, accelerator, *claimed) = host
        used_vcpus, used_ram_mib, used_disk_gib, servers = claimed
        candidates.append(
            HostCandidate(
                id=host_id,
                availability_zone=zone,
                enabled=enabled,
                heartbeat_age=((now if heartbeat.tzinfo else naive_now) - heartbeat).total_seconds(),
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                accelerator=accelerator,
                used_vcpus=used_vcpus,
                used_ram_mib=used_ram_mib,
                used_disk_gib=used_disk_gib,
                servers=servers,
            )
        )
    return candidates


# --- what the agent is told ---


def build_server_spec(session: Session, server: Server, settings: Settings) -> ServerSpec:
    """The whole desired server for `AgentClient.put_server` (raises ApiError if a reference has gone)."""
    flavor = flavors.get_flavor(session, server.flavor_id, include_disabled=True)
    image = image_store.get_image(session, server.project_id, server.image_id)
    ports = server_ports(session, server.id)
    vpc_ids = list(dict.fromkeys(p.vpc_id for p in ports))
    keys = (
        [keypairs.get_keypair(session, server.project_id, server.key_name).public_key]
        if server.key_name
        else []
    )
    user_data = base64.b64decode(server.user_data).decode("utf-8") if server.user_data else None
    return ServerSpec(
        id=server.id,
        name=server.name,
        hostname=hostname_of(server.name, server.id),
        project_id=server.project_id,
        vcpus=flavor.vcpus,
        ram_mib=flavor.ram_mib,
        root_disk_gib=server.root_volume_size,
        image=image_store.image_ref(image, settings),
        ports=[
            PortSpec(
                id=p.id,
                mac=p.mac_address,
                ip=p.ip_address,
                subnet_id=p.subnet_id,
                vpc_id=p.vpc_id,
                security_group_ids=list(p.security_group_ids),
            )
            for p in ports
        ],
        networks=[networks.network_spec(session, vpc_id, server.host_id) for vpc_id in vpc_ids],
        security_groups=networks.security_group_specs(session, server.security_group_ids),
        ssh_keys=keys,
        admin_pass=server.admin_pass,
        user_data=user_data,
        power="shutoff" if server.status == SHUTOFF else "running",
    )


def push_security_groups(
    ctx: ControllerContext, group_ids: Iterable[str], *, members_only: bool = False
) -> None:
    """Send the current rules and members of these groups to every host with a server they filter.

    Call it after a group's membership (a server came or went) or rules changed. Groups whose rules name a
    changed group as their remote group are sent too, since their member lists feed those rules. With
    `members_only` (only membership changed) only those referring groups are sent: the changed groups' own
    rules are as every host has them, so a group no rule names costs no push at all (at scale, a push per
    create to every host holding a member is quadratic). Best effort: an agent that misses it is logged, and
    the reconciler repairs it.
    """
    changed = set(group_ids)
    if not changed:
        return
    with Session(ctx.engine) as session:
        referring = session.exec(
            select(SecurityGroupRule.security_group_id).where(
                col(SecurityGroupRule.remote_group_id).in_(changed)
            )
        ).all()
        affected = set(referring) if members_only else changed | set(referring)
        if not affected:
            return
        placed = session.exec(
            select(Server.host_id, Server.security_group_ids).where(
                col(Server.host_id).is_not(None), Server.status != DELETED
            )
        ).all()
        host_ids = {host_id for host_id, gids in placed if affected & set(gids)}
        if not host_ids:
            return
        existing = session.exec(select(SecurityGroup.id).where(col(SecurityGroup.id).in_(affected))).all()
        specs = networks.security_group_specs(session, sorted(existing))
        hosts = session.exec(select(Host).where(col(Host.id).in_(host_ids))).all()
    for host in hosts:
        try:
            ctx.agents.for_host(host).put_security_groups(specs, request_id=request_id_var.get())
        except AgentClientError as exc:
            log.warning("pushing security groups %s to host %s failed: %s", sorted(affected), host.id, exc)
        else:
            log.info("pushed security groups %s to host %s", sorted(affected), host.id)


# --- console ---


def console_output(ctx: ControllerContext, project_id: str, server_id: str, length: int | None) -> str:
    with Session(ctx.engine) as session:
        server = get_server(session, project_id, server_id)
        host = session.get(Host, server.host_id) if server.host_id else None
    if host is None:
        return ""
    try:
        return ctx.agents.for_host(host).console_output(server.id, length, request_id=request_id_var.get())
    except AgentCallError as exc:
        if exc.status == 404:
            return ""
        raise ApiError(
            f"Host {host.id} could not read the console: {exc.message}", code="Ecs.0001", status=500
        ) from None
    except AgentUnreachable as exc:
        raise ApiError(
            f"Host {host.id} of server {server_id} is unreachable: {exc.reason}", code="Ecs.0001", status=503
        ) from None

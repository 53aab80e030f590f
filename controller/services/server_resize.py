"""Resize (modify specifications): a server gets another flavor's vCPUs and memory, and a larger root disk when
that flavor has one, in place on its host.

The request is checked and recorded in one transaction: the compare-and-swap into the RESIZE task, then the
server row takes the new flavor and root size at once, so the project's quota usage (summed from the server
rows) counts the new size from that moment, and the host's usage counters take the difference
(`services.host_usage.take`, refused when the host has no room for the growth); the quota is checked before the
transaction commits. The job (`jobs/handlers/server_resize.py`) has the
agent stop the guest, redefine it and start it again; a failure puts the old flavor back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest, Conflict, QuotaExceeded
from controller.jobs.queue import new_job
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.image import Image
from controller.models.server import Server
from controller.models.server_change import WITH_STOP_SERVER, ResizeServerIn
from controller.scheduler import NoValidHost, PlacementRequest, schedule
from controller.services import flavors, host_usage, quotas
from controller.services.scheduler_policy import scheduler_policy
from controller.services.servers import (
    NO_VALID_HOST,
    SERVER_BUSY,
    begin_transition,
    get_server,
    host_candidates,
)
from controller.state import ACTIVE, SHUTOFF

log = logging.getLogger(__name__)

RESIZE_JOB = "resizeServer"


@dataclass(frozen=True)
class ResizePlan:
    """What a resize changes; kept in the job's payload so a failure can put the old values back."""

    action: str  # resize (a running server) or resize_stopped
    old_flavor_id: str
    old_root_gib: int
    new_flavor_id: str
    new_root_gib: int


def resize_server(
    ctx: ControllerContext, project_id: str, server_id: str, body: ResizeServerIn, request_id: str
) -> str | None:
    """Start resizing the server; the job id, or None for a dry run that passed."""
    option = body.resize
    with session_scope(ctx.engine) as session:
        server = get_server(session, project_id, server_id)
        flavor = flavors.get_flavor(session, option.flavor_ref)
        plan = plan_resize(session, server, flavor, stop_allowed=option.mode == WITH_STOP_SERVER)
        old = flavors.get_flavor(session, plan.old_flavor_id, include_disabled=True)
        from_status = server.status  # read before the update below refreshes the row
        begin_transition(session, [server], plan.action)
        session.exec(  # type: ignore[call-overload]
            update(Server)
            .where(col(Server.id) == server.id)
            .values(flavor_id=flavor.id, root_volume_size=plan.new_root_gib)
        )
        check_quota(
            session,
            ctx.settings,
            project_id,
            vcpus=flavor.vcpus - old.vcpus,
            ram=flavor.ram_mib - old.ram_mib,
        )
        if server.host_id is not None:
            check_host(session, ctx.settings, server.host_id, server.id, old, flavor, plan)
        if body.dry_run:
            session.rollback()
            log.info("dry run of resizing server %s to %s passed", server_id, flavor.id)
            return None
        job = new_job(
            project_id,
            RESIZE_JOB,
            payload={"server_id": server.id, "from_status": from_status, **dataclasses.asdict(plan)},
            entities={"server_id": server.id},
            request_id=request_id,
        )
        session.add(job)
    log.info(
        "resizing server %s from %s (%s GiB) to %s (%s GiB), job %s",
        server_id,
        plan.old_flavor_id,
        plan.old_root_gib,
        plan.new_flavor_id,
        plan.new_root_gib,
        job.id,
    )
    ctx.kick_jobs()
    return job.id


def flavor_misfit(server: Server, flavor: Flavor, image: Image | None) -> str | None:
    """Why the server cannot be resized to `flavor` (its own, a smaller root disk, too little memory for its
    image), or None when it can; `list_resize_flavors` offers only the flavors this lets through."""
    if flavor.id == server.flavor_id:
        return f"Instance[{server.id}] already has flavor {flavor.id}; choose another one"
    if flavor.disk_gib and flavor.disk_gib < server.root_volume_size:
        return (
            f"Flavor {flavor.id} has a {flavor.disk_gib} GiB root disk, smaller than the "
            f"{server.root_volume_size} GiB of Instance[{server.id}]: a root disk cannot shrink"
        )
    if image is not None and image.min_ram > flavor.ram_mib:
        return f"Flavor {flavor.id} has {flavor.ram_mib} MiB of memory; image {image.id} needs {image.min_ram} MiB"
    return None


def plan_resize(session: Session, server: Server, flavor: Flavor, *, stop_allowed: bool) -> ResizePlan:
    """Check that the server may take `flavor` (400/409 if not) and say what changes."""
    misfit = flavor_misfit(server, flavor, session.get(Image, server.image_id))
    if misfit is not None:
        raise BadRequest(misfit)
    if server.status == ACTIVE and not stop_allowed:
        raise Conflict(
            f"Instance[{server.id}] is running: stop it first, or pass mode {WITH_STOP_SERVER} to have it "
            "stopped for the resize and started again",
            code=SERVER_BUSY,
        )
    return ResizePlan(
        action="resize_stopped" if server.status == SHUTOFF else "resize",
        old_flavor_id=server.flavor_id,
        old_root_gib=server.root_volume_size,
        new_flavor_id=flavor.id,
        new_root_gib=max(server.root_volume_size, flavor.disk_gib),
    )


def check_quota(session: Session, settings: Settings, project_id: str, *, vcpus: int, ram: int) -> None:
    """Raise 403 if growing by `vcpus` and `ram` MiB (already flushed) takes the project over its quota."""
    quotas.lock_project(session, project_id)
    limits = quotas.get_limits(session, settings, project_id)
    used = quotas.get_usage(session, project_id)
    for resource, delta, unit in (("cores", vcpus, ""), ("ram", ram, " MiB")):
        limit, total = getattr(limits, resource), getattr(used, resource)
        if delta > 0 and limit != quotas.UNLIMITED and total > limit:
            raise QuotaExceeded(
                f"Quota exceeded for {resource}: the resize adds {delta}{unit}, {total - delta}{unit} of "
                f"{limit}{unit} already used.",
                code=quotas.ECS_QUOTA,
            )


def check_host(
    session: Session,
    settings: Settings,
    host_id: str,
    server_id: str,
    old: Flavor,
    new: Flavor,
    plan: ResizePlan,
) -> None:
    """Add the resize's difference to the claim on the server's host (`services.host_usage`), or 409 if the
    host has no room for the growth: one conditional UPDATE, so two resizes (or a resize and a create) cannot
    both take the last room."""
    delta = host_usage.Usage(
        new.vcpus - old.vcpus, new.ram_mib - old.ram_mib, plan.new_root_gib - plan.old_root_gib, 0
    )
    policy = scheduler_policy(settings)
    if host_usage.take(session, host_id, delta, policy):
        return
    host = session.exec(
        select(Host).where(Host.id == host_id).execution_options(populate_existing=True)
    ).first()
    if host is None:
        return  # a host that went away: the job fails with a clear reason
    (claimed,) = host_candidates([host])
    # Say why with the scheduler's words, judging the growth alone, ignoring zone, enablement and liveness:
    # the server stays where it is, and a disabled host only refuses new servers.
    before = dataclasses.replace(claimed, enabled=True, heartbeat_age=0.0)
    growth = PlacementRequest(
        vcpus=max(0, new.vcpus - old.vcpus),
        ram_mib=max(0, new.ram_mib - old.ram_mib),
        disk_gib=plan.new_root_gib - plan.old_root_gib,
    )
    result = schedule(growth, [before], policy)
    reason = result.reasons.get(host_id, "no capacity") if isinstance(result, NoValidHost) else "no capacity"
    raise Conflict(
        f"Host {host_id} of Instance[{server_id}] has no room for flavor {new.id}: {reason}",
        code=NO_VALID_HOST,
    )

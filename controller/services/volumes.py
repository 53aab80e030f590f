"""EVS volumes: create, list, show, update, extend, delete, and their attach/detach through ECS.

Every state change starts with a compare-and-swap from the volume transition table (`volume_state`); the job
that carries it out lands the volume. A volume reaches a host lazily: its qcow2 is made on the server's host
by the first attach job, and `host_id` then keeps the volume there until an attach to a server on another host
of its zone moves it (`volume_moves`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest, Conflict, NotFound, not_found_code
from controller.jobs.queue import new_job
from controller.models.common import utcnow
from controller.models.host import Host
from controller.models.server import Server
from controller.models.volume import (
    VOLUME_TYPES,
    AttachVolumeIn,
    CreateVolumeIn,
    UpdateVolumeIn,
    Volume,
    VolumeActionIn,
    VolumeIn,
)
from controller.services import quotas, volume_moves
from controller.services.servers import SERVER_BUSY, get_server
from controller.services.volume_snapshots import check_snapshots_allow
from controller.services.volume_sources import resolve_source
from controller.services.volume_state import (
    ATTACHING,
    AVAILABLE,
    DELETED,
    DETACHING,
    IN_USE,
    STATUSES,
    refusal,
    transition,
)
from controller.state import ACTIVE, SHUTOFF
from controller.state import DELETED as SERVER_DELETED

log = logging.getLogger(__name__)

CREATE_JOB, DELETE_JOB = "createVolume", "deleteVolume"
ATTACH_JOB, DETACH_JOB = "attachVolume", "detachVolume"
EXTEND_JOB = "extendVolume"

VOLUME_NOT_FOUND = not_found_code("/cloudvolumes")
VOLUME_BUSY = "EVS.2026"  # labcloud's: the volume's status does not allow the action
BAD_VOLUME_REQUEST = "EVS.2024"

MIN_SIZE_GIB, MAX_SIZE_GIB = 1, 32768
MAX_COUNT = 100
MAX_NAME, MAX_DESCRIPTION, MAX_METADATA = 64, 255, 50
DEFAULT_LIMIT, MAX_LIMIT = 1000, 1000
# Data volumes take vdb..vdz; vda is the root disk. The letter a caller asks for is kept (sdc -> vdc).
_DEVICE = re.compile(r"^/dev/(?:vd|sd|xvd)([b-z])$")
_LETTERS = "bcdefghijklmnopqrstuvwxyz"
ROOT_DISK = "vda"
MAX_DATA_VOLUMES = len(_LETTERS)


def volume_not_found(volume_id: str) -> NotFound:
    return NotFound(f"Volume[{volume_id}] could not be found.", code=VOLUME_NOT_FOUND)


def get_volume(session: Session, project_id: str, volume_id: str) -> Volume:
    """A live volume of the project; deleted, unknown and foreign volumes are all 404."""
    volume = session.get(Volume, volume_id)
    if volume is None or volume.project_id != project_id or volume.status == DELETED:
        raise volume_not_found(volume_id)
    return volume


# --- create, update, list ---


def create_volumes(
    ctx: ControllerContext, project_id: str, body: CreateVolumeIn, request_id: str
) -> tuple[str, list[str]]:
    """Insert `count` volumes in `creating` and one job that makes them available; (job id, volume ids)."""
    req = body.volume
    _check_create(req, body.server_id)
    with session_scope(ctx.engine) as session:
        zones = {ctx.settings.default_availability_zone, *session.exec(select(Host.availability_zone)).all()}
        if req.availability_zone not in zones:
            raise BadRequest(
                f"Invalid availability_zone {req.availability_zone!r}: known zones are "
                f"{', '.join(sorted(zones))}",
                code=BAD_VOLUME_REQUEST,
            )
        source = resolve_source(session, project_id, req)
        name = req.name or ""
        names = [name] if req.count == 1 else [f"{name}-{i:04d}" for i in range(1, req.count + 1)]
        volumes = [
            Volume(
                project_id=project_id,
                name=n,
                description=req.description or "",
                size=req.size,
                volume_type=req.volume_type,
                availability_zone=req.availability_zone,
                status=transition("create").during,
                meta=dict(req.metadata),
                source_kind=source.kind,
                source_id=source.id,
                host_id=source.host_id,
                bootable=source.bootable,
            )
            for n in names
        ]
        session.add_all(volumes)
        session.flush()
        quotas.check_volumes_added(
            session, ctx.settings, project_id, count=len(volumes), gigabytes=req.size * len(volumes)
        )
        ids = [v.id for v in volumes]
        job = new_job(
            project_id,
            CREATE_JOB,
            payload={"volume_ids": ids},
            entities={
                "volume_id": ids[0],
                "volume_type": req.volume_type,
                "size": req.size,
                "name": names[0],
            },
            request_id=request_id,
        )
        session.add(job)
    log.info("creating volumes %s (%s GiB %s, job %s)", ids, req.size, req.volume_type, job.id)
    ctx.kick_jobs()
    return job.id, ids


def _check_create(req: VolumeIn, server_id: str | None) -> None:
    problems = []
    if not MIN_SIZE_GIB <= req.size <= MAX_SIZE_GIB:
        problems.append(f"size {req.size} must be between {MIN_SIZE_GIB} and {MAX_SIZE_GIB} GiB")
    if req.volume_type not in VOLUME_TYPES:
        problems.append(f"volume_type {req.volume_type!r} must be one of {', '.join(VOLUME_TYPES)}")
    if not 1 <= req.count <= MAX_COUNT:
        problems.append(f"count {req.count} must be between 1 and {MAX_COUNT}")
    problems += _text_problems(req.name, req.description)
    if len(req.metadata) > MAX_METADATA:
        problems.append(f"at most {MAX_METADATA} metadata entries")
    unsupported = {
        "server_id": server_id,
    }
    problems += [f"{key} is not supported yet" for key, value in unsupported.items() if value]
    if req.multiattach:
        problems.append("shared (multiattach) volumes are not supported")
    if problems:
        raise BadRequest("Invalid volume: " + "; ".join(problems), code=BAD_VOLUME_REQUEST)


def _text_problems(name: str | None, description: str | None) -> list[str]:
    problems = []
    if name is not None and len(name) > MAX_NAME:
        problems.append(f"name is longer than {MAX_NAME} characters")
    if description is not None and len(description) > MAX_DESCRIPTION:
        problems.append(f"description is longer than {MAX_DESCRIPTION} characters")
    return problems


def update_volume(ctx: ControllerContext, project_id: str, volume_id: str, body: UpdateVolumeIn) -> Volume:
    change = body.volume
    if change.name is None and change.description is None:
        raise BadRequest("Give a name or a description to change", code=BAD_VOLUME_REQUEST)
    problems = _text_problems(change.name, change.description)
    if problems:
        raise BadRequest("Invalid volume: " + "; ".join(problems), code=BAD_VOLUME_REQUEST)
    with session_scope(ctx.engine) as session:
        volume = get_volume(session, project_id, volume_id)
        if change.name is not None:
            volume.name = change.name
        if change.description is not None:
            volume.description = change.description
        volume.updated_at = utcnow()
        session.add(volume)
        session.flush()
        session.refresh(volume)
        session.expunge(volume)
    return volume


@dataclass(frozen=True)
class VolumeFilters:
    name: str | None = None
    status: str | None = None
    server_id: str | None = None
    availability_zone: str | None = None
    limit: int | None = None
    offset: int | None = None


def list_volumes(session: Session, project_id: str, filters: VolumeFilters) -> tuple[int, list[Volume]]:
    """(total before paging, one page), newest first. `offset` counts volumes, as in Cinder."""
    limit = DEFAULT_LIMIT if filters.limit is None else filters.limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(
            f"Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}", code=BAD_VOLUME_REQUEST
        )
    offset = filters.offset or 0
    if offset < 0:
        raise BadRequest(f"Invalid offset {offset}: it must be 0 or more", code=BAD_VOLUME_REQUEST)
    if filters.status is not None and filters.status not in STATUSES:
        raise BadRequest(f"Invalid status {filters.status!r}", code=BAD_VOLUME_REQUEST)
    stmt = select(Volume).where(Volume.project_id == project_id, Volume.status != DELETED)
    if filters.name is not None:
        stmt = stmt.where(Volume.name == filters.name)
    if filters.status is not None:
        stmt = stmt.where(Volume.status == filters.status)
    if filters.server_id is not None:
        stmt = stmt.where(Volume.server_id == filters.server_id)
    if filters.availability_zone is not None:
        stmt = stmt.where(Volume.availability_zone == filters.availability_zone)
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    page = stmt.order_by(col(Volume.created_at).desc(), col(Volume.id)).offset(offset).limit(limit)
    return int(total), list(session.exec(page).all())


# --- delete, attach, detach: compare-and-swap into the transitional status, then a job ---


def begin(session: Session, volume: Volume, action: str, **values: object) -> None:
    """Move the volume into `action`'s transitional status, or raise 409 (the transaction then rolls back)."""
    t = transition(action)
    stmt = (
        update(Volume)
        .where(col(Volume.id) == volume.id, col(Volume.status).in_(t.allowed_from))
        .values(status=t.during, updated_at=utcnow(), **values)
    )
    if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
        status = session.exec(select(Volume.status).where(Volume.id == volume.id)).one()
        reason = refusal(status, action) or f"its status changed to {status}"
        raise Conflict(f"Volume[{volume.id}]: {reason}.", code=VOLUME_BUSY)
    check_snapshots_allow(session, volume.id, action)  # after the CAS, which holds the row


def land(session: Session, volume_id: str, during: str, values: dict[str, object]) -> bool:
    """End the volume's transitional status `during` with `values`; False when it is no longer in it."""
    stmt = (
        update(Volume)
        .where(col(Volume.id) == volume_id, col(Volume.status) == during)
        .values(updated_at=utcnow(), **values)
    )
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


def release_server_volumes(session: Session, server_id: str) -> list[str]:
    """Make the volumes of a deleted server available again; their files stay on the host. Returns their ids.

    The server delete job calls this in the transaction that marks the server DELETED; attach and delete also
    call it for a volume whose server is gone, so a volume is never stuck in-use.
    """
    ids = list(
        session.exec(
            select(Volume.id).where(
                Volume.server_id == server_id, col(Volume.status).in_((ATTACHING, IN_USE, DETACHING))
            )
        ).all()
    )
    if ids:
        session.exec(
            update(Volume)
            .where(col(Volume.id).in_(ids))
            .values(status=AVAILABLE, server_id=None, device=None, attached_at=None, updated_at=utcnow())
        )
        log.info("server %s is gone: volumes %s available again", server_id, ids)
    return ids


def attached_volumes(session: Session, server_id: str) -> list[Volume]:
    """The live volumes attached (or being attached or detached) to the server."""
    stmt = select(Volume).where(
        Volume.server_id == server_id, col(Volume.status).in_((ATTACHING, IN_USE, DETACHING))
    )
    return list(session.exec(stmt).all())


def delete_server_volumes(session: Session, server_id: str) -> list[str]:
    """Mark the data volumes of a server being deleted with `delete_volume` as deleted; returns their ids.

    The caller removes their files from the host first; the rows stay, like every deleted volume's.
    """
    ids = [v.id for v in attached_volumes(session, server_id)]
    if ids:
        now = utcnow()
        session.exec(
            update(Volume)
            .where(col(Volume.id).in_(ids))
            .values(
                status=DELETED, deleted_at=now, server_id=None, device=None, attached_at=None, updated_at=now
            )
        )
        log.info("server %s is gone with its volumes: %s deleted", server_id, ids)
    return ids


def _heal(session: Session, volume: Volume) -> Volume:
    """The volume as it should be: released if the server it was attached to has been deleted."""
    if volume.server_id is None:
        return volume
    server = session.get(Server, volume.server_id)
    if server is not None and server.status != SERVER_DELETED:
        return volume
    release_server_volumes(session, volume.server_id)
    session.refresh(volume)
    return volume


def delete_volume(ctx: ControllerContext, project_id: str, volume_id: str, request_id: str) -> str:
    with session_scope(ctx.engine) as session:
        volume = _heal(session, get_volume(session, project_id, volume_id))
        begin(session, volume, "delete")
        job = new_job(
            project_id,
            DELETE_JOB,
            payload={"volume_id": volume.id},
            entities={"volume_id": volume.id},
            request_id=request_id,
        )
        session.add(job)
    log.info("deleting volume %s (job %s)", volume_id, job.id)
    ctx.kick_jobs()
    return job.id


def extend_volume(
    ctx: ControllerContext, project_id: str, volume_id: str, body: VolumeActionIn, request_id: str
) -> str:
    """Start growing the volume to `new_size` GiB; 400 unless that is larger than now and within the limit.

    The job's payload keeps the status to return to (available or in-use), since extend ends where it began.
    An in-use volume grows online, so its server must be in a steady state.
    """
    new_size = body.os_extend.new_size
    with session_scope(ctx.engine) as session:
        volume = _heal(session, get_volume(session, project_id, volume_id))
        if new_size <= volume.size:
            raise BadRequest(
                f"Invalid new_size {new_size}: volume {volume.id} has {volume.size} GiB and can only grow",
                code=BAD_VOLUME_REQUEST,
            )
        if new_size > MAX_SIZE_GIB:
            raise BadRequest(
                f"Invalid new_size {new_size}: at most {MAX_SIZE_GIB} GiB", code=BAD_VOLUME_REQUEST
            )
        if volume.server_id is not None:
            server = session.get(Server, volume.server_id)
            if server is not None:
                _check_server_ready(server)
        back_to = volume.status
        begin(session, volume, "extend")
        growth = new_size - volume.size
        quotas.check_volumes_added(
            session, ctx.settings, project_id, count=0, gigabytes=growth, growing=growth
        )
        job = new_job(
            project_id,
            EXTEND_JOB,
            payload={"volume_id": volume.id, "new_size": new_size, "back_to": back_to},
            entities={"volume_id": volume.id, "size": new_size},
            request_id=request_id,
        )
        session.add(job)
    log.info("extending volume %s from %s to %s GiB (job %s)", volume_id, volume.size, new_size, job.id)
    ctx.kick_jobs()
    return job.id


def attach_volume(
    ctx: ControllerContext, project_id: str, server_id: str, body: AttachVolumeIn, request_id: str
) -> str | None:
    """Start attaching; the job id, or None for a dry run that found the request valid."""
    wanted = body.volume_attachment
    with session_scope(ctx.engine) as session:
        server = get_server(session, project_id, server_id)
        volume = _heal(session, get_volume(session, project_id, wanted.volume_id))
        _check_server_ready(server)
        if volume.availability_zone != server.availability_zone:
            raise BadRequest(
                f"Volume[{volume.id}] is in {volume.availability_zone}, server {server.id} in "
                f"{server.availability_zone}: they must be in the same availability zone"
            )
        move_from = volume_moves.check_move(session, ctx.settings, volume, server)
        requested = _requested_letter(wanted.device)
        if body.dry_run:
            refused = refusal(volume.status, "attach")
            if refused:
                raise Conflict(f"Volume[{volume.id}]: {refused}.", code=VOLUME_BUSY)
            _device_for(session, server.id, volume.id, requested)
            return None
        # The CAS comes first: on SQLite it takes the write lock, so two attaches to one server choose
        # their devices one after the other.
        begin(session, volume, "attach", server_id=server.id)
        device = _device_for(session, server.id, volume.id, requested)
        session.exec(update(Volume).where(col(Volume.id) == volume.id).values(device=device))
        job = new_job(
            project_id,
            ATTACH_JOB,
            payload={
                "volume_id": volume.id,
                "server_id": server.id,
                "device": device,
                "move_from": move_from,
            },
            entities={"server_id": server.id, "volume_id": volume.id},
            request_id=request_id,
        )
        session.add(job)
    log.info("attaching volume %s to server %s as %s (job %s)", volume.id, server_id, device, job.id)
    ctx.kick_jobs()
    return job.id


def detach_volume(
    ctx: ControllerContext, project_id: str, server_id: str, volume_id: str, request_id: str
) -> str:
    with session_scope(ctx.engine) as session:
        server = get_server(session, project_id, server_id)
        _check_not_root_disk(server, volume_id)
        volume = get_volume(session, project_id, volume_id)
        if volume.server_id != server.id:
            raise BadRequest(
                f"Volume[{volume.id}] is not attached to server {server.id}", code=BAD_VOLUME_REQUEST
            )
        _check_server_ready(server)
        begin(session, volume, "detach")
        job = new_job(
            project_id,
            DETACH_JOB,
            payload={"volume_id": volume.id, "server_id": server.id},
            entities={"server_id": server.id, "volume_id": volume.id},
            request_id=request_id,
        )
        session.add(job)
    log.info("detaching volume %s from server %s (job %s)", volume_id, server_id, job.id)
    ctx.kick_jobs()
    return job.id


def _check_not_root_disk(server: Server, volume_id: str) -> None:
    """400 for a detach naming the root disk: it is the server's own overlay, not an EVS volume, so it has no
    volume id; a caller may still try the server's id or its device name."""
    if volume_id in (server.id, ROOT_DISK, f"/dev/{ROOT_DISK}"):
        raise BadRequest(
            f"{volume_id!r} names the root disk (/dev/{ROOT_DISK}) of server {server.id}: it is part of the "
            "server, not an EVS volume, and cannot be detached (it goes when the server is deleted)",
            code=BAD_VOLUME_REQUEST,
        )


def _check_server_ready(server: Server) -> None:
    if server.task_state or server.status not in (ACTIVE, SHUTOFF):
        raise Conflict(
            f"Instance[{server.id}] is {server.status}"
            + (f" ({server.task_state})" if server.task_state else "")
            + "; volumes can be attached and detached only while it is ACTIVE or SHUTOFF.",
            code=SERVER_BUSY,
        )
    if server.host_id is None:
        raise Conflict(f"Instance[{server.id}] has no host yet.", code=SERVER_BUSY)


def _requested_letter(device: str | None) -> str | None:
    if device is None or device == "":
        return None
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise BadRequest(f"Invalid device {device!r}: use /dev/vdb … /dev/vdz (or leave it out)")
    return match.group(1)


def _device_for(session: Session, server_id: str, volume_id: str, letter: str | None) -> str:
    """The requested device if free, else the first free one; 400 when none is left."""
    taken = set(
        session.exec(
            select(Volume.device).where(
                Volume.server_id == server_id, Volume.id != volume_id, Volume.status != DELETED
            )
        ).all()
    )
    if letter is not None:
        device = f"/dev/vd{letter}"
        if device in taken:
            raise BadRequest(f"Device {device} of server {server_id} is already in use")
        return device
    for free in _LETTERS:
        if f"/dev/vd{free}" not in taken:
            return f"/dev/vd{free}"
    raise BadRequest(f"Server {server_id} already has {MAX_DATA_VOLUMES} data volumes")

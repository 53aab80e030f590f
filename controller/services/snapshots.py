"""EVS snapshots: create, list, show, update, delete, and rollback onto the source volume.

Each change starts with a compare-and-swap from the snapshot transition table (`snapshot_state`) and, for a
rollback, from the volume's (`volume_state`), in the transaction that records the job carrying it out. The
EVS API answers these calls with the snapshot itself (202), not a job id: the job is labcloud's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest, Conflict
from controller.jobs.queue import new_job
from controller.models.common import utcnow
from controller.models.snapshot import CreateSnapshotIn, RollbackSnapshotIn, Snapshot, UpdateSnapshotIn
from controller.models.volume import Volume
from controller.services.snapshot_state import DELETED, STATUSES, refusal, transition
from controller.services.volume_sources import get_snapshot
from controller.services.volume_state import AVAILABLE as VOLUME_AVAILABLE
from controller.services.volume_state import IN_USE
from controller.services.volumes import begin as begin_volume
from controller.services.volumes import get_volume

log = logging.getLogger(__name__)

CREATE_JOB, DELETE_JOB, ROLLBACK_JOB = "createSnapshot", "deleteSnapshot", "rollbackSnapshot"
BAD_REQUEST = "EVS.2024"
SNAPSHOT_BUSY = "EVS.2026"
MAX_NAME, MAX_DESCRIPTION, MAX_METADATA = 64, 255, 50
DEFAULT_LIMIT, MAX_LIMIT = 1000, 1000


def create_snapshot(
    ctx: ControllerContext, project_id: str, body: CreateSnapshotIn, request_id: str
) -> Snapshot:
    """Record the snapshot in `creating` and the job that copies the volume; an in-use volume needs `force`."""
    req = body.snapshot
    _check_text(req.name, req.description)
    if len(req.metadata) > MAX_METADATA:
        raise BadRequest(f"Invalid snapshot: at most {MAX_METADATA} metadata entries", code=BAD_REQUEST)
    with session_scope(ctx.engine) as session:
        volume = get_volume(session, project_id, req.volume_id)
        if volume.status == IN_USE and not req.force:
            raise BadRequest(
                f"Volume[{volume.id}] is in-use: set force to true to snapshot an attached volume",
                code=BAD_REQUEST,
            )
        # A no-op update on the volume row, as a compare-and-swap: it must still be available or in-use, and
        # the row lock makes a concurrent attach or delete wait for this transaction and then see the snapshot.
        held = session.exec(
            update(Volume)
            .where(col(Volume.id) == volume.id, col(Volume.status).in_((VOLUME_AVAILABLE, IN_USE)))
            .values(updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        if held != 1:
            raise Conflict(
                f"Volume[{volume.id}] is {volume.status}; only an available or in-use volume can be "
                "snapshotted.",
                code=SNAPSHOT_BUSY,
            )
        on_host = volume.host_id is not None
        snapshot = Snapshot(
            project_id=project_id,
            volume_id=volume.id,
            name=req.name or "",
            description=req.description or "",
            status=transition("create").during,
            size=volume.size,
            availability_zone=volume.availability_zone,
            host_id=volume.host_id,
            source_kind=None if on_host else volume.source_kind,
            source_id=None if on_host else volume.source_id,
            meta=dict(req.metadata),
        )
        session.add(snapshot)
        session.add(
            new_job(
                project_id,
                CREATE_JOB,
                payload={"snapshot_id": snapshot.id},
                entities={"snapshot_id": snapshot.id, "volume_id": volume.id},
                request_id=request_id,
            )
        )
        session.flush()
        session.refresh(snapshot)
        session.expunge(snapshot)
    log.info("creating snapshot %s of volume %s (host %s)", snapshot.id, volume.id, volume.host_id or "-")
    ctx.kick_jobs()
    return snapshot


def update_snapshot(
    ctx: ControllerContext, project_id: str, snapshot_id: str, body: UpdateSnapshotIn
) -> Snapshot:
    change = body.snapshot
    if change.name is None and change.description is None:
        raise BadRequest("Give a name or a description to change", code=BAD_REQUEST)
    _check_text(change.name, change.description)
    with session_scope(ctx.engine) as session:
        snapshot = get_snapshot(session, project_id, snapshot_id)
        if change.name is not None:
            snapshot.name = change.name
        if change.description is not None:
            snapshot.description = change.description
        snapshot.updated_at = utcnow()
        session.add(snapshot)
        session.flush()
        session.refresh(snapshot)
        session.expunge(snapshot)
    return snapshot


def delete_snapshot(ctx: ControllerContext, project_id: str, snapshot_id: str, request_id: str) -> None:
    with session_scope(ctx.engine) as session:
        snapshot = get_snapshot(session, project_id, snapshot_id)
        _begin(session, snapshot, "delete")
        session.add(
            new_job(
                project_id,
                DELETE_JOB,
                payload={"snapshot_id": snapshot.id},
                entities={"snapshot_id": snapshot.id},
                request_id=request_id,
            )
        )
    log.info("deleting snapshot %s", snapshot_id)
    ctx.kick_jobs()


def rollback_snapshot(
    ctx: ControllerContext, project_id: str, snapshot_id: str, body: RollbackSnapshotIn, request_id: str
) -> str:
    """Start putting the snapshot's data back onto its source volume, which must be detached; its volume id."""
    req = body.rollback
    _check_text(req.name, None)
    with session_scope(ctx.engine) as session:
        snapshot = get_snapshot(session, project_id, snapshot_id)
        if req.volume_id != snapshot.volume_id:
            raise BadRequest(
                f"Snapshot[{snapshot.id}] can be rolled back only onto its own volume {snapshot.volume_id}, "
                f"not {req.volume_id}",
                code=BAD_REQUEST,
            )
        volume = get_volume(session, project_id, req.volume_id)
        begin_volume(session, volume, "rollback", **({"name": req.name} if req.name else {}))
        _begin(session, snapshot, "rollback")
        session.add(
            new_job(
                project_id,
                ROLLBACK_JOB,
                payload={"snapshot_id": snapshot.id, "volume_id": volume.id},
                entities={"snapshot_id": snapshot.id, "volume_id": volume.id},
                request_id=request_id,
            )
        )
    log.info("rolling volume %s back to snapshot %s", volume.id, snapshot.id)
    ctx.kick_jobs()
    return volume.id


@dataclass(frozen=True)
class SnapshotFilters:
    name: str | None = None
    status: str | None = None
    volume_id: str | None = None
    availability_zone: str | None = None
    id: str | None = None
    limit: int | None = None
    offset: int | None = None


def list_snapshots(session: Session, project_id: str, filters: SnapshotFilters) -> tuple[int, list[Snapshot]]:
    """(total before paging, one page), newest first. `offset` counts snapshots, as in Cinder."""
    limit = DEFAULT_LIMIT if filters.limit is None else filters.limit
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"Invalid limit {limit}: it must be between 1 and {MAX_LIMIT}", code=BAD_REQUEST)
    offset = filters.offset or 0
    if offset < 0:
        raise BadRequest(f"Invalid offset {offset}: it must be 0 or more", code=BAD_REQUEST)
    if filters.status is not None and (filters.status not in STATUSES or filters.status == DELETED):
        raise BadRequest(f"Invalid status {filters.status!r}", code=BAD_REQUEST)
    stmt = select(Snapshot).where(Snapshot.project_id == project_id, Snapshot.status != DELETED)
    for column, value in (
        (Snapshot.name, filters.name),
        (Snapshot.status, filters.status),
        (Snapshot.volume_id, filters.volume_id),
        (Snapshot.availability_zone, filters.availability_zone),
        (Snapshot.id, filters.id),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    page = stmt.order_by(col(Snapshot.created_at).desc(), col(Snapshot.id)).offset(offset).limit(limit)
    return int(total), list(session.exec(page).all())


# --- compare-and-swap on the snapshot's status ---


def _begin(session: Session, snapshot: Snapshot, action: str) -> None:
    """Move the snapshot into `action`'s transitional status, or raise 409 (the transaction then rolls back)."""
    t = transition(action)
    stmt = (
        update(Snapshot)
        .where(col(Snapshot.id) == snapshot.id, col(Snapshot.status).in_(t.allowed_from))
        .values(status=t.during, updated_at=utcnow())
    )
    if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
        status = session.exec(select(Snapshot.status).where(Snapshot.id == snapshot.id)).one()
        reason = refusal(status, action) or f"its status changed to {status}"
        raise Conflict(f"Snapshot[{snapshot.id}]: {reason}.", code=SNAPSHOT_BUSY)


def land(session: Session, snapshot_id: str, during: str, values: dict[str, object]) -> bool:
    """End the snapshot's transitional status `during` with `values`; False when it is no longer in it."""
    stmt = (
        update(Snapshot)
        .where(col(Snapshot.id) == snapshot_id, col(Snapshot.status) == during)
        .values(updated_at=utcnow(), **values)
    )
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


def _check_text(name: str | None, description: str | None) -> None:
    problems = []
    if name is not None and len(name) > MAX_NAME:
        problems.append(f"name is longer than {MAX_NAME} characters")
    if description is not None and len(description) > MAX_DESCRIPTION:
        problems.append(f"description is longer than {MAX_DESCRIPTION} characters")
    if problems:
        raise BadRequest("Invalid snapshot: " + "; ".join(problems), code=BAD_REQUEST)

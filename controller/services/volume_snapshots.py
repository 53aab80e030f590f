"""What a volume's snapshots forbid: deleting a volume that still has snapshots, and changing a volume while one
of its snapshots is being taken or rolled back onto it (the agent is copying its file at that moment)."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller.errors import Conflict
from controller.models.snapshot import Snapshot
from controller.services.snapshot_state import CREATING, DELETED, ROLLBACKING

VOLUME_BUSY = "EVS.2026"


def check_snapshots_allow(session: Session, volume_id: str, action: str) -> None:
    """Raise 409 if the volume's snapshots forbid `action` (a volume action such as delete or attach)."""
    busy = session.exec(
        select(Snapshot.id, Snapshot.status).where(
            Snapshot.volume_id == volume_id, col(Snapshot.status).in_((CREATING, ROLLBACKING))
        )
    ).first()
    if busy is not None:
        raise Conflict(
            f"Volume[{volume_id}]: snapshot {busy[0]} is {busy[1]}; try again when that finishes.",
            code=VOLUME_BUSY,
        )
    if action == "delete":
        count = session.exec(
            select(func.count()).where(Snapshot.volume_id == volume_id, Snapshot.status != DELETED)
        ).one()
        if count:
            raise Conflict(
                f"Volume[{volume_id}] has {count} snapshot(s); delete them before the volume.",
                code=VOLUME_BUSY,
            )

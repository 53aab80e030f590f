"""What a new volume is filled from (`imageRef` or `snapshot_id` at create), and the agent spec that carries it.

A volume made from a snapshot that has a file lives on that snapshot's host, so it is placed there at once
(`host_id`) and made by its create job; attaching it to a server on another host is then refused like any
volume stored elsewhere. A volume made from an image, or from a snapshot of a volume that never reached a host,
is made lazily at its first attach, like an empty one, from the source recorded on its row.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sqlmodel import Session

from agent.schemas import VolumeSource, VolumeSpec
from controller.config import Settings
from controller.errors import BadRequest, Conflict, NotFound, not_found_code
from controller.models.image import ACTIVE as IMAGE_ACTIVE
from controller.models.image import Image
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume, VolumeIn
from controller.services.backup_sources import BACKUP, disk_backup, stored_backup_file
from controller.services.image_store import get_image, image_ref
from controller.services.snapshot_state import AVAILABLE as SNAPSHOT_AVAILABLE
from controller.services.snapshot_state import DELETED as SNAPSHOT_DELETED

log = logging.getLogger(__name__)

GIB = 1024**3
IMAGE, SNAPSHOT = "image", "snapshot"
SNAPSHOT_NOT_FOUND = not_found_code("/cloudsnapshots")
BAD_VOLUME_REQUEST = "EVS.2024"
SNAPSHOT_BUSY = "EVS.2026"


@dataclass(frozen=True)
class Source:
    """Where the new volumes' data comes from, and what that implies for them."""

    kind: str | None = None
    id: str | None = None
    host_id: str | None = None  # set: the volumes are made on this host at once
    min_size: int = 0  # GiB
    bootable: str = "false"


def get_snapshot(session: Session, project_id: str, snapshot_id: str) -> Snapshot:
    """A live snapshot of the project; deleted, unknown and foreign snapshots are all 404."""
    snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None or snapshot.project_id != project_id or snapshot.status == SNAPSHOT_DELETED:
        raise NotFound(f"Snapshot[{snapshot_id}] could not be found.", code=SNAPSHOT_NOT_FOUND)
    return snapshot


def resolve_source(session: Session, project_id: str, req: VolumeIn) -> Source:
    """Check `imageRef` / `snapshot_id` / `backup_id` of a create request: one at most, usable, and fitting
    the size."""
    named = (("imageRef", req.image_ref), ("snapshot_id", req.snapshot_id), ("backup_id", req.backup_id))
    given = [key for key, value in named if value]
    if len(given) > 1:
        raise BadRequest(
            f"Invalid volume: give one of imageRef, snapshot_id and backup_id, not both {' and '.join(given)}",
            code=BAD_VOLUME_REQUEST,
        )
    if req.snapshot_id:
        source = _snapshot_source(session, project_id, req)
    elif req.backup_id:
        backup = disk_backup(session, project_id, req.backup_id)
        bootable = "true" if backup.system_disk else "false"
        source = Source(BACKUP, backup.id, None, backup.resource_size, bootable)
    elif req.image_ref:
        source = _image_source(session, project_id, req.image_ref)
    else:
        return Source()
    if req.size < source.min_size:
        raise BadRequest(
            f"Invalid size {req.size}: a volume from {source.kind} {source.id} needs at least "
            f"{source.min_size} GiB",
            code=BAD_VOLUME_REQUEST,
        )
    return source


def _snapshot_source(session: Session, project_id: str, req: VolumeIn) -> Source:
    snapshot = get_snapshot(session, project_id, req.snapshot_id or "")
    if snapshot.status != SNAPSHOT_AVAILABLE:
        raise Conflict(
            f"Snapshot[{snapshot.id}] is {snapshot.status}; a volume can be made only from an available one.",
            code=SNAPSHOT_BUSY,
        )
    if req.availability_zone != snapshot.availability_zone:
        raise BadRequest(
            f"Invalid availability_zone {req.availability_zone!r}: snapshot {snapshot.id} is in "
            f"{snapshot.availability_zone}",
            code=BAD_VOLUME_REQUEST,
        )
    if snapshot.host_id is not None:
        return Source(SNAPSHOT, snapshot.id, snapshot.host_id, snapshot.size)
    # Its volume had no file: the snapshot is whatever that volume was to be made from.
    return Source(snapshot.source_kind, snapshot.source_id, None, snapshot.size)


def _image_source(session: Session, project_id: str, image_id: str) -> Source:
    image = get_image(session, project_id, image_id)
    if image.status != IMAGE_ACTIVE or not image.checksum:
        raise BadRequest(
            f"Invalid imageRef: image {image.id} is {image.status}, not active", code=BAD_VOLUME_REQUEST
        )
    min_size = max(image.min_disk, math.ceil(image.virtual_size / GIB))
    return Source(IMAGE, image.id, None, min_size, bootable="true")


def volume_spec(
    session: Session, settings: Settings, volume: Volume, size_gib: int | None = None
) -> VolumeSpec:
    """The agent's spec of the volume with its source, which the agent uses only when it first makes the file.

    NotFound or BadRequest when an image source is gone; job handlers turn that into their failure.
    """
    return VolumeSpec(
        id=volume.id,
        size_gib=size_gib if size_gib is not None else volume.size,
        source=agent_source(session, settings, volume.source_kind, volume.source_id),
    )


def agent_source(
    session: Session, settings: Settings, kind: str | None, source_id: str | None
) -> VolumeSource | None:
    if kind is None or source_id is None:
        return None
    if kind == IMAGE:
        image = session.get(Image, source_id)
        if image is None:
            raise NotFound(f"Image [{source_id}] could not be found.", code=not_found_code("/cloudimages"))
        return VolumeSource(kind="image", id=source_id, image=image_ref(image, settings))
    if kind == SNAPSHOT:
        return VolumeSource(kind="snapshot", id=source_id)
    if kind == BACKUP:
        backup = stored_backup_file(session, settings, source_id)
        return VolumeSource(kind="backup", id=source_id, backup=backup)
    raise BadRequest(f"unknown volume source kind {kind!r}", code=BAD_VOLUME_REQUEST)

"""IMS image lifecycle: import from a URL, upload, private images from servers, update and delete.

Statuses: queued (a record without a file yet) -> saving (a job or an upload is writing it) -> active, or
killed when an import or a capture failed (nothing stays in the store; the job's fail_reason says why). A failed
*upload* puts the image back to queued instead, so the same record can take another upload, as Glance does.

Deleting an image that a live server was created from is refused (409): its root disk is an overlay on the
image's content. So is deleting one still to be copied into volumes or a changed OS (`image_users`). The agents'
base-image caches are never pruned today, so hosts keep the file regardless.
"""

from __future__ import annotations

import logging
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest, Conflict, Forbidden
from controller.jobs.queue import new_job
from controller.models.common import utcnow
from controller.models.image import (
    ACTIVE,
    DELETED,
    KILLED,
    QUEUED,
    SAVING,
    CreateImageIn,
    GlanceImageIn,
    Image,
    PatchOp,
)
from controller.models.server import Server
from controller.services import image_store
from controller.services.image_import import StoredImage, min_disk_gib, parse_source_url
from controller.services.image_users import waiting_on_image
from controller.services.servers import SERVER_BUSY, get_server
from controller.state import ACTIVE as SERVER_ACTIVE
from controller.state import DELETED as SERVER_DELETED
from controller.state import SHUTOFF

log = logging.getLogger(__name__)

IMPORT_JOB = "importImage"
CAPTURE_JOB = "createImageByInstance"
BAD = image_store.BAD
IMAGE_BUSY = "IMG.0035"  # labcloud's: the image's status or its users do not allow the action
IMAGE_FORBIDDEN = "IMG.0003"
MAX_NAME, MAX_DESCRIPTION, MAX_TAGS = 128, 1024, 50
MAX_MIN_DISK_GIB, MAX_MIN_RAM_MIB = 1024, 1024 * 1024
UPLOAD = "upload"
# An upload bumps its image's updated_at every UPLOAD_TOUCH; one silent for UPLOAD_STALE died with its controller.
UPLOAD_TOUCH, UPLOAD_STALE = timedelta(seconds=30), timedelta(minutes=10)
DISK_FORMATS = ("qcow2", "raw")
# PATCH paths -> Image attribute; IMS writes its own fields with a `__` prefix.
_PATCHABLE = {
    "/name": "name",
    "/min_disk": "min_disk",
    "/min_ram": "min_ram",
    "/description": "description",
    "/__description": "description",
    "/os_version": "os_version",
    "/__os_version": "os_version",
    "/tags": "tags",
}


# --- create: from a URL, from a server, or a record for an upload ---


def create_image(ctx: ControllerContext, project_id: str, body: CreateImageIn, request_id: str) -> str:
    """`POST /v2/cloudimages/action`; returns the job id (the job's entities name the image)."""
    _check_text(body.name, body.description)
    _check_minimums(body.min_disk, body.min_ram)
    if body.data_images:
        raise BadRequest("data_images are not supported: labcloud captures the root disk only", code=BAD)
    if bool(body.instance_id) == bool(body.image_url):
        raise BadRequest("Give exactly one of instance_id (image from a server) or image_url", code=BAD)
    tags = _tags(body.tags, [f"{t.key}={t.value}" if t.value else t.key for t in body.image_tags])
    if body.image_url:
        return _import(ctx, project_id, body, tags, request_id)
    return _capture(ctx, project_id, body, tags, request_id)


def _import(ctx: ControllerContext, project_id: str, body: CreateImageIn, tags: list[str], rid: str) -> str:
    assert body.image_url is not None
    source = parse_source_url(body.image_url)
    with session_scope(ctx.engine) as session:
        image = _new_private(project_id, body.name, body.description, tags)
        image.min_disk, image.min_ram = body.min_disk or 0, body.min_ram or 0
        image.os_version = body.os_version or ""
        image.data_origin = f"url,{source.url}"
        session.add(image)
        job = _job(project_id, IMPORT_JOB, image, {"url": source.url, "sha256": source.sha256}, rid)
        session.add(job)
    ctx.kick_jobs()
    log.info("image %s: import from %s queued (job %s)", image.id, source.url, job.id)
    return job.id


def register_from_url(
    ctx: ControllerContext, project_id: str, image_id: str, image_url: str, request_id: str
) -> str:
    """`PUT /v1/cloudimages/{id}/upload`: fill a queued image of the project from a URL; returns the job id."""
    source = parse_source_url(image_url)
    with session_scope(ctx.engine) as session:
        image = _own_image(session, project_id, image_id)
        if image.status != QUEUED:
            raise Conflict(
                f"Image {image_id} is {image.status}; only a queued image takes a file", code=IMAGE_BUSY
            )
        image.data_origin = f"url,{source.url}"
        session.add(image)
        job = _job(project_id, IMPORT_JOB, image, {"url": source.url, "sha256": source.sha256}, request_id)
        session.add(job)
    ctx.kick_jobs()
    return job.id


def _capture(ctx: ControllerContext, project_id: str, body: CreateImageIn, tags: list[str], rid: str) -> str:
    assert body.instance_id is not None
    with session_scope(ctx.engine) as session:
        server = get_server(session, project_id, body.instance_id)
        if server.status not in (SERVER_ACTIVE, SHUTOFF) or server.task_state or not server.host_id:
            raise Conflict(
                f"Server {server.id} is {server.status}"
                + (f" ({server.task_state})" if server.task_state else "")
                + ": an image can be made from an ACTIVE or SHUTOFF server only",
                code=SERVER_BUSY,
            )
        origin = session.get(Image, server.image_id)
        image = _new_private(project_id, body.name, body.description, tags)
        image.min_disk = max(body.min_disk or 0, server.root_volume_size)
        image.min_ram = max(body.min_ram or 0, origin.min_ram if origin else 0)
        if origin is not None:
            image.os_type, image.os_version, image.platform = (
                origin.os_type,
                origin.os_version,
                origin.platform,
            )
        image.os_version = body.os_version or image.os_version
        image.data_origin = f"instance,{server.id}"
        session.add(image)
        job = _job(project_id, CAPTURE_JOB, image, {"server_id": server.id, "host_id": server.host_id}, rid)
        session.add(job)
    ctx.kick_jobs()
    log.info("image %s: capture of server %s queued (job %s)", image.id, body.instance_id, job.id)
    return job.id


def create_record(ctx: ControllerContext, project_id: str, body: GlanceImageIn) -> Image:
    """`POST /v2/images`: a queued private image whose file comes with `PUT /v2/images/{id}/file`."""
    _check_text(body.name, None)
    _check_minimums(body.min_disk, body.min_ram)
    if body.visibility != "private":
        raise BadRequest(f"Invalid visibility {body.visibility!r}: only private images can be made", code=BAD)
    if body.disk_format not in DISK_FORMATS or body.container_format != "bare":
        raise BadRequest(
            f"Invalid disk_format/container_format {body.disk_format}/{body.container_format}: "
            "labcloud takes qcow2 or raw in a bare container (raw is stored as qcow2)",
            code=BAD,
        )
    with session_scope(ctx.engine) as session:
        image = _new_private(project_id, body.name, None, _tags(body.tags, []))
        image.min_disk, image.min_ram, image.protected = body.min_disk, body.min_ram, body.protected
        image.os_version = body.os_version or ""
        session.add(image)
    return image


def _new_private(project_id: str, name: str, description: str | None, tags: list[str]) -> Image:
    return Image(
        name=name,
        owner=project_id,
        visibility="private",
        imagetype="private",
        status=QUEUED,
        description=description or "",
        tags=tags,
    )


def _job(project_id: str, kind: str, image: Image, payload: dict[str, Any], request_id: str) -> Any:
    return new_job(
        project_id,
        kind,
        payload={"image_id": image.id, **payload},
        entities={"image_id": image.id, "image_name": image.name, "process_percent": 0.0},
        request_id=request_id,
    )


# --- the upload route's steps ---


def begin_upload(session: Session, project_id: str, image_id: str) -> Image:
    """Claim a queued image of the project for one upload (queued -> saving), else 409. An upload abandoned by
    a controller that died mid-way (saving, untouched for UPLOAD_STALE) can be claimed again."""
    image = _own_image(session, project_id, image_id)
    claim = {"status": SAVING, "data_origin": UPLOAD, "updated_at": utcnow()}
    if not (
        _swap(session, image.id, QUEUED, claim) or (_abandoned(image) and _take_over(session, image, claim))
    ):
        raise Conflict(
            f"Image {image_id} is {image.status}; a file can be uploaded to a queued image only",
            code=IMAGE_BUSY,
        )
    session.refresh(image)
    return image


def touch_upload(session: Session, image_id: str) -> None:
    """Mark a running upload as alive (see UPLOAD_STALE)."""
    stmt = (
        update(Image)
        .where(col(Image.id) == image_id, col(Image.status) == SAVING)
        .values(updated_at=utcnow())
    )
    session.exec(stmt)  # type: ignore[call-overload]


def _abandoned(image: Image) -> bool:
    updated = image.updated_at if image.updated_at.tzinfo else image.updated_at.replace(tzinfo=UTC)
    return image.status == SAVING and image.data_origin == UPLOAD and utcnow() - updated > UPLOAD_STALE


def _take_over(session: Session, image: Image, values: dict[str, Any]) -> bool:
    stmt = (
        update(Image)
        .where(
            col(Image.id) == image.id, col(Image.status) == SAVING, col(Image.updated_at) == image.updated_at
        )
        .values(**values)
    )
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


def mark_stored(session: Session, image_id: str, stored: StoredImage, origin: str | None) -> bool:
    """saving -> active with the stored file's facts; False if the image left saving meanwhile (deleted)."""
    image = session.get(Image, image_id)
    if image is None:
        return False
    values = {
        "status": ACTIVE,
        "checksum": stored.checksum,
        "size": stored.size,
        "virtual_size": stored.virtual_size,
        "file_path": str(stored.path),
        "disk_format": "qcow2",
        "min_disk": max(image.min_disk, min_disk_gib(stored.virtual_size)),
        "updated_at": utcnow(),
    }
    if origin is not None:
        values["data_origin"] = origin
    return _swap(session, image_id, SAVING, values)


def mark_failed(session: Session, image_id: str, status: str) -> None:
    """A failed import/capture (-> killed) or upload (-> queued): no file, whatever it was doing."""
    assert status in (KILLED, QUEUED)
    stmt = (
        update(Image)
        .where(col(Image.id) == image_id, col(Image.status).in_((QUEUED, SAVING)))
        .values(status=status, file_path=None, checksum=None, size=0, virtual_size=0, updated_at=utcnow())
    )
    session.exec(stmt)  # type: ignore[call-overload]


def _swap(session: Session, image_id: str, expected: str, values: dict[str, Any]) -> bool:
    stmt = update(Image).where(col(Image.id) == image_id, col(Image.status) == expected).values(**values)
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


# --- update and delete ---


def update_image(session: Session, project_id: str, image_id: str, ops: list[PatchOp]) -> Image:
    """Apply JSON-patch `ops` (replace/add; remove for tags and the description) all or nothing."""
    image = _own_image(session, project_id, image_id)
    if not ops:
        raise BadRequest("The request has no patch operations", code=BAD)
    changes: dict[str, Any] = {}
    for op in ops:
        attr = _PATCHABLE.get(op.path)
        if attr is None:
            raise BadRequest(
                f"Invalid path {op.path!r}: labcloud can change {', '.join(sorted(_PATCHABLE))}", code=BAD
            )
        if op.op == "remove":
            if attr not in ("tags", "description", "os_version"):
                raise BadRequest(f"{op.path} cannot be removed", code=BAD)
            changes[attr] = [] if attr == "tags" else ""
        elif op.op in ("replace", "add"):
            changes[attr] = _patch_value(attr, op.value)
        else:
            raise BadRequest(f"Invalid op {op.op!r}: use replace, add or remove", code=BAD)
    _check_text(changes.get("name", image.name), changes.get("description"))
    _check_minimums(changes.get("min_disk"), changes.get("min_ram"))
    floor = min_disk_gib(image.virtual_size) if image.virtual_size else 0
    if "min_disk" in changes and changes["min_disk"] < floor:
        raise BadRequest(
            f"min_disk {changes['min_disk']} GiB is smaller than the image's virtual size ({floor} GiB)",
            code=BAD,
        )
    for attr, value in changes.items():
        setattr(image, attr, value)
    image.updated_at = utcnow()
    session.add(image)
    session.flush()
    return image


def _patch_value(attr: str, value: Any) -> Any:
    if attr in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        ):
            raise BadRequest(f"Invalid {attr} {value!r}: it must be a whole number", code=BAD)
        return int(value)
    if attr == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise BadRequest(f"Invalid tags {value!r}: a list of strings", code=BAD)
        return _tags(value, [])
    if not isinstance(value, str):
        raise BadRequest(f"Invalid {attr} {value!r}: it must be a string", code=BAD)
    return value


def delete_image(ctx: ControllerContext, project_id: str, image_id: str) -> None:
    """Delete a private image of the project and its file; 409 while servers use it or a job writes it."""
    with session_scope(ctx.engine) as session:
        image = _own_image(session, project_id, image_id)
        if image.protected:
            raise Conflict(f"Image {image_id} is protected; unprotect it first", code=IMAGE_BUSY)
        if image.status == SAVING and not _abandoned(image):
            raise Conflict(f"Image {image_id} is being saved; wait for its job to end", code=IMAGE_BUSY)
        users = servers_using(session, image_id)
        if users:
            shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
            raise Conflict(
                f"Image {image_id} is in use by {len(users)} server(s) ({shown}): their root disks are overlays "
                "on it. Delete those servers first.",
                code=IMAGE_BUSY,
            )
        waiting = waiting_on_image(session, image_id)
        if waiting:
            raise Conflict(
                f"Image {image_id} is still to be copied for {', '.join(waiting)}: volumes (or their snapshots) "
                "are filled from it at their first attach, and a change of OS to it is under way. Attach or "
                "delete those volumes, or wait for the change, first.",
                code=IMAGE_BUSY,
            )
        if not _swap(session, image_id, image.status, {"status": DELETED, "updated_at": utcnow()}):
            raise Conflict(f"Image {image_id} changed while it was being deleted; try again", code=IMAGE_BUSY)
        path = image.file_path
    image_store.remove_file(path)
    log.info("image %s deleted", image_id)


def servers_using(session: Session, image_id: str) -> list[str]:
    stmt = select(Server.id).where(Server.image_id == image_id, Server.status != SERVER_DELETED)
    return list(session.exec(stmt.order_by(col(Server.created_at))).all())


# --- helpers ---


def _own_image(session: Session, project_id: str, image_id: str) -> Image:
    """An image the project owns; public images are 403, other projects' and unknown ones 404."""
    image = image_store.get_image(session, project_id, image_id)
    if image.owner != project_id:
        raise Forbidden(f"Image {image_id} is a public image; it cannot be changed", code=IMAGE_FORBIDDEN)
    return image


def _check_text(name: str, description: str | None) -> None:
    if not name or len(name) > MAX_NAME or name != name.strip():
        raise BadRequest(f"Invalid name {name!r}: 1 to {MAX_NAME} characters, no outer spaces", code=BAD)
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"Invalid description: at most {MAX_DESCRIPTION} characters", code=BAD)


def _check_minimums(min_disk: int | None, min_ram: int | None) -> None:
    if min_disk is not None and not 0 <= min_disk <= MAX_MIN_DISK_GIB:
        raise BadRequest(f"Invalid min_disk {min_disk}: 0 to {MAX_MIN_DISK_GIB} GiB", code=BAD)
    if min_ram is not None and not 0 <= min_ram <= MAX_MIN_RAM_MIB:
        raise BadRequest(f"Invalid min_ram {min_ram}: 0 to {MAX_MIN_RAM_MIB} MiB", code=BAD)


def _tags(tags: list[str], more: list[str]) -> list[str]:
    merged = list(dict.fromkeys([*tags, *more]))
    if len(merged) > MAX_TAGS or any(not t or len(t) > 255 for t in merged):
        raise BadRequest(f"Invalid tags: at most {MAX_TAGS}, each 1 to 255 characters", code=BAD)
    return merged

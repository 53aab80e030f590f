"""IMS: list, show, create (from a URL, a server or an upload), update and delete images for tenants, and
`GET /internal/images/{id}/file` for agents (join token and transfer grant)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session

from controller.api.internal import require_join_token
from controller.auth.deps import CallerDep
from controller.db import session_scope
from controller.errors import BadRequest, Conflict
from controller.logs import request_id_var
from controller.models.common import iso_z
from controller.models.image import QUEUED, CreateImageIn, GlanceImageIn, Image, PatchOp, RegisterImageIn
from controller.services import image_store, images, transfer_grants
from controller.services.image_import import ImageImportFailed, StagedImage

router = APIRouter()


def image_view(image: Image) -> dict[str, Any]:
    # The `__`-prefixed keys are IMS's own; string-typed flags ("true") are what the SDK model declares.
    return {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": image.visibility,
        "owner": image.owner,
        "protected": image.protected,
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "size": image.size,
        "checksum": image.checksum,
        "tags": list(image.tags),
        "virtual_size": image.virtual_size,
        "created_at": iso_z(image.created_at),
        "updated_at": iso_z(image.updated_at),
        "self": f"/v2/images/{image.id}",
        "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
        "virtual_env_type": "FusionCompute",
        "__os_type": image.os_type,
        "__os_version": image.os_version,
        "__platform": image.platform,
        "__imagetype": image.imagetype,
        "__os_bit": "64",
        "__isregistered": "true",
        "__description": image.description,
        "__image_size": str(image.size),
        "__image_source_type": "uds",
        "__support_kvm": "true",
        "__originalimagename": "",
        "__data_origin": image.data_origin,
        "__productcode": "",
    }


@router.get("/v2/cloudimages")
def list_images(
    caller: CallerDep,
    request: Request,
    name: str | None = None,
    id: str | None = None,
    status: str | None = None,
    visibility: str | None = None,
    imagetype: Annotated[str | None, Query(alias="__imagetype")] = None,
    os_type: Annotated[str | None, Query(alias="__os_type")] = None,
    platform: Annotated[str | None, Query(alias="__platform")] = None,
    disk_format: str | None = None,
    container_format: str | None = None,
    owner: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    marker: str | None = None,
) -> dict[str, Any]:
    filters = {
        "name": name,
        "id": id,
        "status": status,
        "visibility": visibility,
        "imagetype": imagetype,
        "os_type": os_type,
        "platform": platform,
        "disk_format": disk_format,
        "container_format": container_format,
        "owner": owner,
    }
    with Session(request.app.state.ctx.engine) as session:
        images = image_store.list_images(
            session, caller.project_id, filters=filters, marker=marker, limit=limit
        )
        return {"images": [image_view(i) for i in images]}


@router.get("/v2/images")
def glance_list_images(
    caller: CallerDep,
    request: Request,
    name: str | None = None,
    status: str | None = None,
    visibility: str | None = None,
    owner: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    marker: str | None = None,
) -> dict[str, Any]:
    filters = {"name": name, "status": status, "visibility": visibility, "owner": owner}
    with Session(request.app.state.ctx.engine) as session:
        found = image_store.list_images(
            session, caller.project_id, filters=filters, marker=marker, limit=limit
        )
        return {
            "images": [image_view(i) for i in found],
            "schema": "/v2/schemas/images",
            "first": "/v2/images",
        }


@router.get("/v2/images/{image_id}")
def show_image(image_id: str, caller: CallerDep, request: Request) -> dict[str, Any]:
    with Session(request.app.state.ctx.engine) as session:
        return image_view(image_store.get_image(session, caller.project_id, image_id))


@router.post("/v2/cloudimages/action")
def create_image(body: CreateImageIn, caller: CallerDep, request: Request) -> dict[str, Any]:
    """A private image from a server (`instance_id`) or imported from an http(s) `image_url`: a job."""
    job_id = images.create_image(request.app.state.ctx, caller.project_id, body, request_id_var.get())
    return {"job_id": job_id}


@router.put("/v1/cloudimages/{image_id}/upload")
def register_image(
    image_id: str, body: RegisterImageIn, caller: CallerDep, request: Request
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    job_id = images.register_from_url(ctx, caller.project_id, image_id, body.image_url, request_id_var.get())
    return {"job_id": job_id}


@router.post("/v2/images", status_code=201)
def create_image_record(body: GlanceImageIn, caller: CallerDep, request: Request) -> dict[str, Any]:
    return image_view(images.create_record(request.app.state.ctx, caller.project_id, body))


UPLOAD_CHECKSUM_HEADER = "x-image-sha256"  # optional: the sha256 the uploaded bytes must have
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_UPLOAD_WRITE = 4 * 1024 * 1024  # bytes gathered before one write, off the event loop


@router.put("/v2/images/{image_id}/file", status_code=204)
async def upload_image_file(image_id: str, caller: CallerDep, request: Request) -> Response:
    """Glance's upload: the body is the file, streamed into the store (sign with `X-Sdk-Content-Sha256:
    UNSIGNED-PAYLOAD`, else the signature check reads it whole first). A refused file leaves the image queued."""
    ctx = request.app.state.ctx
    expected = request.headers.get(UPLOAD_CHECKSUM_HEADER)
    if expected is not None and not _HEX64.fullmatch(expected):
        raise BadRequest(f"Invalid {UPLOAD_CHECKSUM_HEADER} {expected!r}: 64 hex digits", code=images.BAD)

    def claim() -> None:
        with session_scope(ctx.engine) as session:
            images.begin_upload(session, caller.project_id, image_id)

    await run_in_threadpool(claim)
    staged: StagedImage | None = None
    try:
        staged = await run_in_threadpool(StagedImage, ctx.settings.image_dir, image_id)
        pending = bytearray()
        touched = time.monotonic()
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= _UPLOAD_WRITE:
                await run_in_threadpool(staged.write, bytes(pending))
                pending.clear()
            if time.monotonic() - touched > images.UPLOAD_TOUCH.total_seconds():
                await run_in_threadpool(_touch, ctx, image_id)
                touched = time.monotonic()
        if pending:
            await run_in_threadpool(staged.write, bytes(pending))
        stored = await run_in_threadpool(staged.finish, expected)
    except BaseException as exc:
        await run_in_threadpool(_upload_failed, ctx, image_id, staged)
        if isinstance(exc, ImageImportFailed):
            raise BadRequest(f"The upload was refused: {exc.reason}", code=images.BAD) from None
        raise

    def land() -> bool:
        with session_scope(ctx.engine) as session:
            return images.mark_stored(session, image_id, stored, origin="upload")

    if not await run_in_threadpool(land):
        await run_in_threadpool(_upload_failed, ctx, image_id, staged)
        raise Conflict(f"Image {image_id} was deleted during the upload", code=images.IMAGE_BUSY)
    return Response(status_code=204)


def _touch(ctx: Any, image_id: str) -> None:
    with session_scope(ctx.engine) as session:
        images.touch_upload(session, image_id)


def _upload_failed(ctx: Any, image_id: str, staged: StagedImage | None) -> None:
    if staged is not None:
        staged.discard()
    with session_scope(ctx.engine) as session:
        images.mark_failed(session, image_id, QUEUED)


_PATCH = TypeAdapter(list[PatchOp])


async def _patch_ops(request: Request) -> list[PatchOp]:
    # Read raw: Glance clients send `application/openstack-images-v2.1-json-patch`, not application/json.
    try:
        return _PATCH.validate_json(await request.body())
    except ValidationError as exc:
        raise BadRequest(
            f"Invalid patch: {exc.errors()[0].get('msg', 'not a list of operations')}", code=images.BAD
        ) from None


@router.patch("/v2/cloudimages/{image_id}")
@router.patch("/v2/images/{image_id}")
async def update_image(image_id: str, caller: CallerDep, request: Request) -> dict[str, Any]:
    ops = await _patch_ops(request)

    def apply() -> dict[str, Any]:
        with session_scope(request.app.state.ctx.engine) as session:
            return image_view(images.update_image(session, caller.project_id, image_id, ops))

    return await run_in_threadpool(apply)


@router.delete("/v2/images/{image_id}", status_code=204)
def delete_image(image_id: str, caller: CallerDep, request: Request) -> Response:
    images.delete_image(request.app.state.ctx, caller.project_id, image_id)
    return Response(status_code=204)


@router.get("/internal/images/{image_id}/file", dependencies=[Depends(require_join_token)])
def download_image(image_id: str, request: Request, grant: str | None = None) -> FileResponse:
    transfer_grants.check(request.app.state.ctx.settings, "image", image_id, "GET", grant)
    with Session(request.app.state.ctx.engine) as session:
        path = image_store.image_file(session, image_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{image_id}.qcow2")

"""IMS: `GET /v2/cloudimages` for tenants, and `GET /internal/images/{id}/file` for agents (join token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from sqlmodel import Session

from controller.api.internal import require_join_token
from controller.auth.deps import CallerDep
from controller.models.common import iso_z
from controller.models.image import Image
from controller.services import image_store

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
        "tags": [],
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
        "__data_origin": None,
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


@router.get("/internal/images/{image_id}/file", dependencies=[Depends(require_join_token)])
def download_image(image_id: str, request: Request) -> FileResponse:
    with Session(request.app.state.ctx.engine) as session:
        path = image_store.image_file(session, image_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{image_id}.qcow2")

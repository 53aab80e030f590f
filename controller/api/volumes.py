"""EVS volumes: `POST /v2.1/{project_id}/cloudvolumes` and `/v2/{project_id}/cloudvolumes…`.

The literal `/cloudvolumes/detail` is declared before `/cloudvolumes/{volume_id}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.context import ControllerContext
from controller.logs import request_id_var
from controller.models.host import Host
from controller.models.volume import CreateVolumeIn, UpdateVolumeIn, Volume, VolumeActionIn
from controller.services import volumes
from controller.services.volume_views import volume_detail

router = APIRouter()


def _detail(ctx: ControllerContext, session: Session, volume: Volume) -> dict[str, Any]:
    host = session.get(Host, volume.host_id) if volume.host_id else None
    return volume_detail(volume, ctx.settings.endpoint, host.hostname if host else "")


@router.post("/v2.1/{project_id}/cloudvolumes")
def create(project_id: str, body: CreateVolumeIn, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    job_id, ids = volumes.create_volumes(request_ctx(request), caller.project_id, body, request_id_var.get())
    return {"job_id": job_id, "volume_ids": ids}


@router.post("/v2.1/{project_id}/cloudvolumes/{volume_id}/action")
def action(
    project_id: str, volume_id: str, body: VolumeActionIn, caller: ProjectCaller, request: Request
) -> dict[str, str]:
    """`ResizeVolume` (`os-extend`): grow the volume; answered with the job that does it."""
    job_id = volumes.extend_volume(
        request_ctx(request), caller.project_id, volume_id, body, request_id_var.get()
    )
    return {"job_id": job_id}


@router.get("/v2/{project_id}/cloudvolumes/detail")
def list_details(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: int | None = None,
    offset: int | None = None,
    name: str | None = None,
    status: str | None = None,
    server_id: str | None = None,
    availability_zone: str | None = None,
) -> dict[str, Any]:
    filters = volumes.VolumeFilters(
        name=name,
        status=status,
        server_id=server_id,
        availability_zone=availability_zone,
        limit=limit,
        offset=offset,
    )
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        total, rows = volumes.list_volumes(session, caller.project_id, filters)
        return {
            "count": total,
            "volumes": [_detail(ctx, session, v) for v in rows],
            "volumes_links": [],
        }


@router.get("/v2/{project_id}/cloudvolumes/{volume_id}")
def show(project_id: str, volume_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        volume = volumes.get_volume(session, caller.project_id, volume_id)
        return {"volume": _detail(ctx, session, volume)}


@router.put("/v2/{project_id}/cloudvolumes/{volume_id}")
def update(
    project_id: str, volume_id: str, body: UpdateVolumeIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    """`UpdateVolume`: the SDK reads the changed volume's fields at the top level of the answer."""
    ctx = request_ctx(request)
    volume = volumes.update_volume(ctx, caller.project_id, volume_id, body)
    with Session(ctx.engine) as session:
        return _detail(ctx, session, volume)


@router.delete("/v2/{project_id}/cloudvolumes/{volume_id}")
def delete(project_id: str, volume_id: str, caller: ProjectCaller, request: Request) -> dict[str, str]:
    job_id = volumes.delete_volume(request_ctx(request), caller.project_id, volume_id, request_id_var.get())
    return {"job_id": job_id}

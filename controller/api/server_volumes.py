"""ECS volume attachments: `attachvolume`, `detachvolume/{volume_id}` and `os-volume_attachments`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.logs import request_id_var
from controller.models.volume import AttachVolumeIn
from controller.services import servers, volumes
from controller.services.volume_views import attached_volumes, server_attachment

router = APIRouter()


@router.post("/v1/{project_id}/cloudservers/{server_id}/attachvolume")
def attach(
    project_id: str, server_id: str, body: AttachVolumeIn, caller: ProjectCaller, request: Request
) -> JSONResponse:
    job_id = volumes.attach_volume(
        request_ctx(request), caller.project_id, server_id, body, request_id_var.get()
    )
    if job_id is None:
        return JSONResponse(
            {"message": "dry run: the request is valid; nothing was attached"}, status_code=202
        )
    return JSONResponse({"job_id": job_id})


@router.delete("/v1/{project_id}/cloudservers/{server_id}/detachvolume/{volume_id}")
def detach(
    project_id: str,
    server_id: str,
    volume_id: str,
    caller: ProjectCaller,
    request: Request,
    delete_flag: str | None = None,  # Huawei's forced detach; detaching here always waits for the guest
) -> dict[str, str]:
    job_id = volumes.detach_volume(
        request_ctx(request), caller.project_id, server_id, volume_id, request_id_var.get()
    )
    return {"job_id": job_id}


@router.get("/v1/{project_id}/cloudservers/{server_id}/os-volume_attachments")
def list_attachments(
    project_id: str, server_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        server = servers.get_server(session, caller.project_id, server_id)
        attached = attached_volumes(session, [server.id])[server.id]
    return {"volumeAttachments": [server_attachment(v) for v in attached]}

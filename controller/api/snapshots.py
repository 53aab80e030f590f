"""EVS snapshots: `/v2/{project_id}/cloudsnapshots…`. The literal `/cloudsnapshots/detail` is declared before
`/cloudsnapshots/{snapshot_id}`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.logs import request_id_var
from controller.models.snapshot import CreateSnapshotIn, RollbackSnapshotIn, UpdateSnapshotIn
from controller.services import snapshots
from controller.services.snapshot_views import snapshot_detail, snapshot_list_entry
from controller.services.volume_sources import get_snapshot

router = APIRouter()


@router.post("/v2/{project_id}/cloudsnapshots")
def create(project_id: str, body: CreateSnapshotIn, caller: ProjectCaller, request: Request) -> JSONResponse:
    snapshot = snapshots.create_snapshot(request_ctx(request), caller.project_id, body, request_id_var.get())
    return JSONResponse({"snapshot": snapshot_detail(snapshot)}, status_code=202)


@router.get("/v2/{project_id}/cloudsnapshots/detail")
def list_details(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: int | None = None,
    offset: int | None = None,
    name: str | None = None,
    status: str | None = None,
    volume_id: str | None = None,
    availability_zone: str | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    filters = snapshots.SnapshotFilters(
        name=name,
        status=status,
        volume_id=volume_id,
        availability_zone=availability_zone,
        id=id,
        limit=limit,
        offset=offset,
    )
    with Session(request_ctx(request).engine) as session:
        total, rows = snapshots.list_snapshots(session, caller.project_id, filters)
        return {"count": total, "snapshots": [snapshot_list_entry(s) for s in rows], "snapshots_links": []}


@router.get("/v2/{project_id}/cloudsnapshots/{snapshot_id}")
def show(project_id: str, snapshot_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"snapshot": snapshot_detail(get_snapshot(session, caller.project_id, snapshot_id))}


@router.put("/v2/{project_id}/cloudsnapshots/{snapshot_id}")
def update(
    project_id: str, snapshot_id: str, body: UpdateSnapshotIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    snapshot = snapshots.update_snapshot(request_ctx(request), caller.project_id, snapshot_id, body)
    return {"snapshot": snapshot_detail(snapshot)}


@router.delete("/v2/{project_id}/cloudsnapshots/{snapshot_id}")
def delete(project_id: str, snapshot_id: str, caller: ProjectCaller, request: Request) -> Response:
    snapshots.delete_snapshot(request_ctx(request), caller.project_id, snapshot_id, request_id_var.get())
    return Response(status_code=202)


@router.post("/v2/{project_id}/cloudsnapshots/{snapshot_id}/rollback")
def rollback(
    project_id: str, snapshot_id: str, body: RollbackSnapshotIn, caller: ProjectCaller, request: Request
) -> JSONResponse:
    volume_id = snapshots.rollback_snapshot(
        request_ctx(request), caller.project_id, snapshot_id, body, request_id_var.get()
    )
    return JSONResponse({"rollback": {"volume_id": volume_id}}, status_code=202)

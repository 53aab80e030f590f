"""Server operations: batch `POST /v1/{project_id}/cloudservers/delete` and `/cloudservers/action`; per server
`resize`, `reinstallos` and `changeos`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from controller.auth.deps import ProjectCaller
from controller.errors import BadRequest
from controller.logs import request_id_var
from controller.models.server import DeleteServersIn, ServerActionIn
from controller.models.server_change import ChangeOsServerIn, ReinstallServerIn, ResizeServerIn
from controller.services import server_rebuild, server_resize, servers

router = APIRouter()


@router.post("/v1/{project_id}/cloudservers/delete")
def delete(project_id: str, body: DeleteServersIn, caller: ProjectCaller, request: Request) -> dict[str, str]:
    ids = [ref.id for ref in body.servers]
    job_id = servers.delete_servers(
        request.app.state.ctx,
        caller.project_id,
        ids,
        request_id_var.get(),
        delete_volume=body.delete_volume,
        delete_publicip=body.delete_publicip,
    )
    return {"job_id": job_id}


@router.post("/v1/{project_id}/cloudservers/action")
def action(project_id: str, body: ServerActionIn, caller: ProjectCaller, request: Request) -> dict[str, str]:
    """`{"os-start": …}`, `{"os-stop": …, "type"}` or `{"reboot": …, "type"}`: exactly one of them."""
    given = {
        verb: batch
        for verb, batch in (("start", body.os_start), ("stop", body.os_stop), ("reboot", body.reboot))
        if batch is not None
    }
    if len(given) != 1:
        raise BadRequest("Give exactly one action: os-start, os-stop or reboot")
    ((verb, batch),) = given.items()
    ids = [ref.id for ref in batch.servers]
    job_id = servers.batch_action(
        request.app.state.ctx, caller.project_id, verb, ids, batch.type, request_id_var.get()
    )
    return {"job_id": job_id}


# --- in-place changes: resize (modify specifications), reinstall and change OS ---


@router.post("/v1/{project_id}/cloudservers/{server_id}/resize")
@router.post("/v1.1/{project_id}/cloudservers/{server_id}/resize")
def resize(
    project_id: str, server_id: str, body: ResizeServerIn, caller: ProjectCaller, request: Request
) -> dict[str, str]:
    """`{"resize": {"flavorRef", "mode"}, "dry_run"}`; a running server needs mode withStopServer."""
    job_id = server_resize.resize_server(
        request.app.state.ctx, caller.project_id, server_id, body, request_id_var.get()
    )
    return {"job_id": job_id} if job_id is not None else {}


@router.post("/v1/{project_id}/cloudservers/{server_id}/reinstallos")
@router.post("/v2/{project_id}/cloudservers/{server_id}/reinstallos")
def reinstall(
    project_id: str, server_id: str, body: ReinstallServerIn, caller: ProjectCaller, request: Request
) -> dict[str, str]:
    """A new root disk from the server's own image; `/v2` (cloud-init) also takes metadata.user_data."""
    job_id = server_rebuild.rebuild_server(
        request.app.state.ctx,
        caller.project_id,
        server_id,
        body.os_reinstall,
        request_id_var.get(),
        cloud_init=request.url.path.startswith("/v2/"),
    )
    return {"job_id": job_id}


@router.post("/v1/{project_id}/cloudservers/{server_id}/changeos")
@router.post("/v2/{project_id}/cloudservers/{server_id}/changeos")
def change_os(
    project_id: str, server_id: str, body: ChangeOsServerIn, caller: ProjectCaller, request: Request
) -> dict[str, str]:
    """A new root disk from another image (`imageid`)."""
    job_id = server_rebuild.rebuild_server(
        request.app.state.ctx,
        caller.project_id,
        server_id,
        body.os_change,
        request_id_var.get(),
        image_id=body.os_change.imageid,
        cloud_init=request.url.path.startswith("/v2/"),
    )
    return {"job_id": job_id}

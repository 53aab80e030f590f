"""Batch server operations: `POST /v1/{project_id}/cloudservers/delete` and `/cloudservers/action`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from controller.auth.deps import ProjectCaller
from controller.errors import BadRequest
from controller.logs import request_id_var
from controller.models.server import DeleteServersIn, ServerActionIn
from controller.services import servers

router = APIRouter()


@router.post("/v1/{project_id}/cloudservers/delete")
def delete(project_id: str, body: DeleteServersIn, caller: ProjectCaller, request: Request) -> dict[str, str]:
    ids = [ref.id for ref in body.servers]
    job_id = servers.delete_servers(
        request.app.state.ctx, caller.project_id, ids, request_id_var.get(), delete_volume=body.delete_volume
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

"""Key pairs on the Nova path the ECS SDK uses: `/v2.1/{project_id}/os-keypairs`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.models.common import iso_z
from controller.models.keypair import Keypair
from controller.services import keypairs, quotas

router = APIRouter()


class KeypairCreate(BaseModel):
    name: str
    public_key: str | None = None
    type: str | None = None
    user_id: str | None = None


class KeypairCreateBody(BaseModel):
    keypair: KeypairCreate


def keypair_summary(kp: Keypair) -> dict[str, Any]:
    return {"name": kp.name, "public_key": kp.public_key, "fingerprint": kp.fingerprint, "type": kp.type}


@router.post("/v2.1/{project_id}/os-keypairs")
def create_keypair(
    project_id: str, body: KeypairCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.keypair
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        quotas.lock_project(session, caller.project_id)  # opens the transaction the quota check rolls back
        # The key belongs to the calling user; a `user_id` in the body (admin-only in Nova) is not honoured.
        new = keypairs.create_keypair(
            session,
            caller.project_id,
            name=opt.name,
            user_id=caller.user_id,
            public_key=opt.public_key,
            key_type=opt.type,
        )
        quotas.check_added(session, ctx.settings, caller.project_id, "key_pairs")
        view = {**keypair_summary(new.keypair), "user_id": new.keypair.user_id}
    if new.private_key is not None:
        view["private_key"] = new.private_key
    return {"keypair": view}


@router.get("/v2.1/{project_id}/os-keypairs")
def list_keypairs(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    marker: str | None = None,
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        found = keypairs.list_keypairs(session, caller.project_id, marker=marker, limit=limit)
        return {"keypairs": [{"keypair": keypair_summary(kp)} for kp in found]}


@router.get("/v2.1/{project_id}/os-keypairs/{name}")
def show_keypair(project_id: str, name: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        kp = keypairs.get_keypair(session, caller.project_id, name)
        return {
            "keypair": {
                **keypair_summary(kp),
                "id": kp.id,
                "user_id": kp.user_id,
                "created_at": iso_z(kp.created_at),
                "updated_at": None,
                "deleted": False,
                "deleted_at": None,
            }
        }


@router.delete("/v2.1/{project_id}/os-keypairs/{name}", status_code=204)
def delete_keypair(project_id: str, name: str, caller: ProjectCaller, request: Request) -> Response:
    with session_scope(request.app.state.ctx.engine) as session:
        keypairs.delete_keypair(session, caller.project_id, name)
    return Response(status_code=204)

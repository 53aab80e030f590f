"""Server groups: `/v1/{project_id}/cloudservers/os-server-groups` (create, list, show, delete).

Included before the servers router, so these literal paths win over `/cloudservers/{server_id}`. Members join
at server create through `os:scheduler_hints.group` (`services.server_create`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.models.server_group import ServerGroup
from controller.services import server_groups

router = APIRouter()

PATH = "/v1/{project_id}/cloudservers/os-server-groups"


class ServerGroupIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    policies: list[str]


class CreateServerGroupIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    server_group: ServerGroupIn


def group_view(group: ServerGroup, members: list[str]) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "policies": list(group.policies),
        "members": members,
        "metadata": {},
    }


@router.post(PATH)
def create_server_group(
    project_id: str, body: CreateServerGroupIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        opt = body.server_group
        group = server_groups.create_group(session, caller.project_id, opt.name, opt.policies)
        return {"server_group": group_view(group, [])}


@router.get(PATH)
def list_server_groups(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
    marker: str | None = None,
) -> dict[str, Any]:
    with Session(request.app.state.ctx.engine) as session:
        groups = server_groups.list_groups(session, caller.project_id, marker=marker, limit=limit)
        members = server_groups.members(session, [g.id for g in groups])
        answer: dict[str, Any] = {"server_groups": [group_view(g, members.get(g.id, [])) for g in groups]}
    if limit and len(groups) == limit:
        answer["page_info"] = {"next_marker": groups[-1].id}
    return answer


@router.get(PATH + "/{group_id}")
def show_server_group(
    project_id: str, group_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with Session(request.app.state.ctx.engine) as session:
        group = server_groups.get_group(session, caller.project_id, group_id)
        members = server_groups.members(session, [group.id])
        return {"server_group": group_view(group, members.get(group.id, []))}


@router.delete(PATH + "/{group_id}", status_code=204)
def delete_server_group(project_id: str, group_id: str, caller: ProjectCaller, request: Request) -> Response:
    with session_scope(request.app.state.ctx.engine) as session:
        server_groups.delete_group(session, caller.project_id, group_id)
    return Response(status_code=204)

"""ECS servers: create, list, show, limits, NICs and console output (`/v1/{project_id}/cloudservers…`).

Literal paths (`/cloudservers/detail`, `/cloudservers/limits`) are declared before `/cloudservers/{server_id}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.logs import request_id_var
from controller.models.server import CreateServersIn
from controller.services import quotas, servers
from controller.services.quota_views import limits_view
from controller.services.server_create import create_servers
from controller.services.server_views import (
    ServerFilters,
    interfaces_view,
)

router = APIRouter()


@router.post("/v1/{project_id}/cloudservers")
@router.post("/v1.1/{project_id}/cloudservers")
def create(
    project_id: str,
    body: CreateServersIn,
    caller: ProjectCaller,
    request: Request,
    client_token: Annotated[str | None, Header(alias="X-Client-Token")] = None,
) -> JSONResponse:
    """Pay-per-use create (`CreatePostPaidServers`) and v1.1 create (`CreateServers`, adds order_id).

    With `X-Client-Token`, a retry with the same body answers the same job and servers for 8 hours.
    """
    result = create_servers(request_ctx(request), caller, body, request_id_var.get(), client_token)
    if result.job_id is None:
        return JSONResponse(
            {"message": "dry run: the request is valid; nothing was created"}, status_code=202
        )
    answer: dict[str, Any] = {"job_id": result.job_id, "serverIds": result.server_ids}
    if request.url.path.startswith("/v1.1/"):
        answer["order_id"] = ""  # no billing orders in labcloud: every server is pay-per-use
    return JSONResponse(answer)


@router.get("/v1/{project_id}/cloudservers/detail")
def list_details(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    offset: int | None = None,
    limit: int | None = None,
    name: str | None = None,
    status: str | None = None,
    flavor: str | None = None,
    ip: str | None = None,
    ip_eq: str | None = None,
    server_id: str | None = None,
    tags: str | None = None,
    not_tags: Annotated[str | None, Query(alias="not-tags")] = None,
) -> Response:
    filters = ServerFilters(
        name=name,
        status=status,
        flavor=flavor,
        ip=ip,
        ip_eq=ip_eq,
        server_id=server_id,
        tags=tags,
        not_tags=not_tags,
        offset=offset,
        limit=limit,
    )
    ctx = request_ctx(request)
    body = ctx.view_cache.listing(ctx.engine, caller.project_id, filters, ctx.settings.host_dead_seconds)
    return Response(body, media_type="application/json")


@router.get("/v1/{project_id}/cloudservers/limits")
def show_limits(project_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    """`ShowServerLimits`: the project's quotas and usage."""
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        limits = quotas.get_limits(session, ctx.settings, caller.project_id)
        used = quotas.get_usage(session, caller.project_id)
    return {"absolute": limits_view(limits, used)}


@router.get("/v1/{project_id}/cloudservers/{server_id}")
def show(project_id: str, server_id: str, caller: ProjectCaller, request: Request) -> Response:
    ctx = request_ctx(request)
    body = ctx.view_cache.detail(ctx.engine, caller.project_id, server_id, ctx.settings.host_dead_seconds)
    if body is None:
        raise servers.not_found(server_id)
    return Response(body, media_type="application/json")


@router.get("/v1/{project_id}/cloudservers/{server_id}/os-interface")
def list_interfaces(
    project_id: str, server_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        server = servers.get_server(session, caller.project_id, server_id)
        return interfaces_view(servers.server_ports(session, server.id))


@router.get("/v1/{project_id}/cloudservers/{server_id}/console-output")
def console_output(
    project_id: str,
    server_id: str,
    caller: ProjectCaller,
    request: Request,
    length: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> dict[str, str]:
    """`ShowServerConsoleOutput`: the serial console log, or its last `length` lines."""
    return {"output": servers.console_output(request_ctx(request), caller.project_id, server_id, length)}

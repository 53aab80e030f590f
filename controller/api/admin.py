"""Operator APIs (admin credentials only, anyone else 403): hosts and project quotas.

`GET /v1/admin/hosts`, `POST /v1/admin/hosts/{host_id}/disable|enable` (body optional: `{"reason": "…"}`),
`POST /v1/admin/hosts/{host_id}/forget` (a reinstalled host's agent may register it anew),
`GET|PUT /v1/admin/projects/{project_id}/quotas` (`{"quota": {"instances": 10, …}}`; null restores the
default, -1 is unlimited).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import Caller, CallerDep
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import Forbidden, NotFound
from controller.models.project import Project
from controller.services import host_identity, hosts, quotas

router = APIRouter()


async def require_admin(caller: CallerDep) -> Caller:  # async: no I/O, no thread-pool hand-off
    if not caller.is_admin:
        raise Forbidden("This API needs an admin credential")
    return caller


AdminCaller = Annotated[Caller, Depends(require_admin)]


# --- hosts ---


class HostActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


@router.get("/v1/admin/hosts")
def list_hosts(caller: AdminCaller, request: Request) -> dict[str, list[dict[str, Any]]]:
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        rows = hosts.list_hosts(session)
    return {"hosts": [hosts.host_view(h, ctx.settings.host_dead_seconds) for h in rows]}


@router.post("/v1/admin/hosts/{host_id}/disable")
def disable_host(
    host_id: str, caller: AdminCaller, request: Request, body: HostActionIn | None = None
) -> dict[str, Any]:
    return _set_enabled(request, host_id, False, body.reason if body else None)


@router.post("/v1/admin/hosts/{host_id}/enable")
def enable_host(
    host_id: str, caller: AdminCaller, request: Request, body: HostActionIn | None = None
) -> dict[str, Any]:
    return _set_enabled(request, host_id, True, None)


@router.post("/v1/admin/hosts/{host_id}/forget")
def forget_host(host_id: str, caller: AdminCaller, request: Request) -> dict[str, Any]:
    """Drop the host's agent API token on record (a reinstalled host): the next agent registering it is
    trusted as on its first registration. The host is down until then."""
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        host = host_identity.forget(session, host_id, ctx.settings.host_dead_seconds)
        view = hosts.host_view(host, ctx.settings.host_dead_seconds)
    return {"host": view}


def _set_enabled(request: Request, host_id: str, enabled: bool, reason: str | None) -> dict[str, Any]:
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        host = hosts.set_enabled(session, host_id, enabled, reason)
        view = hosts.host_view(host, ctx.settings.host_dead_seconds)
    return {"host": view}


# --- quotas ---


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    instances: int | None = Field(default=None, ge=-1)
    cores: int | None = Field(default=None, ge=-1)
    ram: int | None = Field(default=None, ge=-1)
    security_groups: int | None = Field(default=None, ge=-1)
    key_pairs: int | None = Field(default=None, ge=-1)
    volumes: int | None = Field(default=None, ge=-1)
    gigabytes: int | None = Field(default=None, ge=-1)
    eips: int | None = Field(default=None, ge=-1)


class QuotaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quota: QuotaIn


@router.get("/v1/admin/projects/{project_id}/quotas")
def show_quota(project_id: str, caller: AdminCaller, request: Request) -> dict[str, Any]:
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        if session.get(Project, project_id) is None:
            raise NotFound(f"Project {project_id} does not exist", code="Ecs.0000")
        return _quota_view(session, ctx, project_id)


@router.put("/v1/admin/projects/{project_id}/quotas")
def set_quota(project_id: str, body: QuotaBody, caller: AdminCaller, request: Request) -> dict[str, Any]:
    """Only the keys present in the body change (an explicit null goes back to the default)."""
    ctx = request_ctx(request)
    changes = body.quota.model_dump(exclude_unset=True)
    with session_scope(ctx.engine) as session:
        quotas.set_limits(session, project_id, changes)
        return _quota_view(session, ctx, project_id)


def _quota_view(session: Session, ctx: ControllerContext, project_id: str) -> dict[str, Any]:
    limits = quotas.get_limits(session, ctx.settings, project_id)
    used = quotas.get_usage(session, project_id)
    return {"quota": {"project_id": project_id, **limits.as_dict()}, "usage": used.as_dict()}

"""Operator APIs for tenants (admin credentials only, anyone else 403): projects and their AK/SK credentials.

`POST|GET /v1/admin/projects` (`{"project": {"name", "description"}}`), `GET|DELETE /v1/admin/projects/{id}`
(id or name; delete is 409 while the project owns resources), `POST|GET /v1/admin/projects/{id}/credentials`
(the answer to POST is the only one that carries the secret), `GET /v1/admin/credentials[?project_id=]`,
`DELETE /v1/admin/credentials/{access_key}` (revoke: refused at once, also by the credential cache).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session

from controller.api.admin import AdminCaller
from controller.api.request_context import request_ctx
from controller.db import session_scope
from controller.services import projects, quotas

router = APIRouter()


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str | None = None


class ProjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: ProjectIn


class CredentialIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    description: str | None = None


class CredentialBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credential: CredentialIn


@router.post("/v1/admin/projects", status_code=201)
def create_project(body: ProjectBody, caller: AdminCaller, request: Request) -> dict[str, Any]:
    with session_scope(request_ctx(request).engine) as session:
        project = projects.create_project(session, body.project.name, body.project.description)
        return {"project": projects.project_view(project)}


@router.get("/v1/admin/projects")
def list_projects(caller: AdminCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"projects": [projects.project_view(p) for p in projects.list_projects(session)]}


@router.get("/v1/admin/projects/{project_id}")
def show_project(project_id: str, caller: AdminCaller, request: Request) -> dict[str, Any]:
    """The project, what it owns (per table), and its quotas and usage."""
    ctx = request_ctx(request)
    with Session(ctx.engine) as session:
        project = projects.get_project(session, project_id)
        limits = quotas.get_limits(session, ctx.settings, project.id)
        used = quotas.get_usage(session, project.id)
        owned = projects.owned_resources(session, project.id)
        view = projects.project_view(project)
    return {"project": {**view, "resources": owned, "quota": limits.as_dict(), "usage": used.as_dict()}}


@router.delete("/v1/admin/projects/{project_id}", status_code=204)
def delete_project(project_id: str, caller: AdminCaller, request: Request) -> Response:
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        keys = projects.delete_project(session, project_id, caller.project_id)
    for key in keys:
        ctx.credentials.forget(key)
    return Response(status_code=204)


@router.post("/v1/admin/projects/{project_id}/credentials", status_code=201)
def issue_credential(
    project_id: str, caller: AdminCaller, request: Request, body: CredentialBody | None = None
) -> dict[str, Any]:
    description = body.credential.description if body else None
    with session_scope(request_ctx(request).engine) as session:
        cred = projects.issue_credential(session, project_id, description)
        return {"credential": projects.credential_view(cred, secret=True)}


@router.get("/v1/admin/projects/{project_id}/credentials")
def list_project_credentials(project_id: str, caller: AdminCaller, request: Request) -> dict[str, Any]:
    return _credentials(request, project_id)


@router.get("/v1/admin/credentials")
def list_credentials(caller: AdminCaller, request: Request, project_id: str | None = None) -> dict[str, Any]:
    return _credentials(request, project_id)


def _credentials(request: Request, project_id: str | None) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        creds = projects.list_credentials(session, project_id)
        return {"credentials": [projects.credential_view(c) for c in creds]}


@router.delete("/v1/admin/credentials/{access_key}", status_code=204)
def revoke_credential(access_key: str, caller: AdminCaller, request: Request) -> Response:
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        projects.revoke_credential(session, access_key)
    # After the commit: a lookup racing with it re-reads the row and sees revoked_at.
    ctx.credentials.forget(access_key)
    return Response(status_code=204)

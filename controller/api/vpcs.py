"""VPC v1: `/v1/{project_id}/vpcs`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.errors import BadRequest
from controller.models.common import iso_z
from controller.models.network import Vpc
from controller.services import eips, network_push, networks

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1, le=2000)]


class VpcCreate(BaseModel):
    name: str | None = None
    cidr: str | None = None
    description: str | None = None
    enterprise_project_id: str | None = None
    enable_shared_snat: bool | None = None  # labcloud: servers without an EIP reach the outside (default on)


class VpcCreateBody(BaseModel):
    vpc: VpcCreate


class VpcUpdate(BaseModel):
    name: str | None = None
    cidr: str | None = None
    description: str | None = None
    routes: list[dict[str, Any]] | None = None
    enable_shared_snat: bool | None = None


class VpcUpdateBody(BaseModel):
    vpc: VpcUpdate


def vpc_view(vpc: Vpc) -> dict[str, Any]:
    return {
        "id": vpc.id,
        "name": vpc.name,
        "cidr": vpc.cidr,
        "status": vpc.status,
        "description": vpc.description,
        "routes": [],
        "enable_shared_snat": vpc.enable_shared_snat,
        "enterprise_project_id": "0",
        "tenant_id": vpc.project_id,
        "created_at": iso_z(vpc.created_at),
        "updated_at": iso_z(vpc.updated_at),
    }


@router.post("/v1/{project_id}/vpcs")
def create_vpc(
    project_id: str, body: VpcCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.vpc
    with session_scope(request.app.state.ctx.engine) as session:
        vpc = networks.create_vpc(
            session, caller.project_id, name=opt.name, cidr=opt.cidr, description=opt.description
        )
        if opt.enable_shared_snat is not None:
            vpc.enable_shared_snat = opt.enable_shared_snat
            session.add(vpc)
            session.flush()
        return {"vpc": vpc_view(vpc)}


@router.get("/v1/{project_id}/vpcs")
def list_vpcs(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = None,
    marker: str | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        vpcs = networks.list_vpcs(session, caller.project_id, vpc_id=id, marker=marker, limit=limit)
        return {"vpcs": [vpc_view(v) for v in vpcs]}


@router.get("/v1/{project_id}/vpcs/{vpc_id}")
def show_vpc(project_id: str, vpc_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        return {"vpc": vpc_view(networks.get_vpc(session, caller.project_id, vpc_id))}


@router.put("/v1/{project_id}/vpcs/{vpc_id}")
def update_vpc(
    project_id: str, vpc_id: str, body: VpcUpdateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.vpc
    if opt.routes:
        raise BadRequest("Static routes in a VPC are not supported", code=networks.BAD)
    with session_scope(request.app.state.ctx.engine) as session:
        vpc = networks.update_vpc(
            session, caller.project_id, vpc_id, name=opt.name, description=opt.description, cidr=opt.cidr
        )
        snat_changed = opt.enable_shared_snat is not None and opt.enable_shared_snat != vpc.enable_shared_snat
        if snat_changed:
            vpc.enable_shared_snat = bool(opt.enable_shared_snat)
            session.add(vpc)
            session.flush()
        answer = {"vpc": vpc_view(vpc)}
        snat_hosts = eips.vpc_hosts(session, vpc.id) if snat_changed else []
    if opt.cidr is not None:
        network_push.push_network(request.app.state.ctx, vpc_id)  # the hosts route the new CIDR
    eips.push_external(request.app.state.ctx, snat_hosts)  # shared SNAT switched on or off
    return answer


@router.delete("/v1/{project_id}/vpcs/{vpc_id}", status_code=204)
def delete_vpc(project_id: str, vpc_id: str, caller: ProjectCaller, request: Request) -> Response:
    with session_scope(request.app.state.ctx.engine) as session:
        networks.delete_vpc(session, caller.project_id, vpc_id)
    return Response(status_code=204)

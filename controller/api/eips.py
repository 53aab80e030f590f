"""EIP v1: `/v1/{project_id}/publicips` (create = allocate, list, show, update = bind/unbind a port, delete)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.models.eip import Eip
from controller.models.network import Port
from controller.services import eips

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1, le=2000)]
IdList = Annotated[list[str] | None, Query()]


class PublicipCreate(BaseModel):
    type: str
    ip_version: int | None = None
    ip_address: str | None = None
    alias: str | None = None
    port_id: str | None = None


class BandwidthCreate(BaseModel):
    share_type: str
    name: str | None = None
    size: int | None = None
    charge_mode: str | None = None
    id: str | None = None


class PublicipCreateBody(BaseModel):
    publicip: PublicipCreate
    bandwidth: BandwidthCreate
    enterprise_project_id: str | None = None


class PublicipUpdate(BaseModel):
    port_id: str | None = None
    alias: str | None = None
    ip_version: int | None = None


class PublicipUpdateBody(BaseModel):
    publicip: PublicipUpdate


def eip_view(eip: Eip, private_ip: str | None) -> dict[str, Any]:
    return {
        "id": eip.id,
        "status": "ACTIVE" if eip.port_id else "DOWN",
        "type": eip.type,
        "public_ip_address": eip.public_ip_address,
        "port_id": eip.port_id,
        "private_ip_address": private_ip,
        "ip_version": 4,
        "alias": eip.alias,
        "tenant_id": eip.project_id,
        "enterprise_project_id": "0",
        "bandwidth_id": eip.bandwidth_id,
        "bandwidth_name": eip.bandwidth_name,
        "bandwidth_size": eip.bandwidth_size,
        "bandwidth_share_type": eip.bandwidth_share_type,
        "create_time": eip.created_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _views(session: Session, rows: list[Eip]) -> list[dict[str, Any]]:
    fixed = {}
    for eip in rows:
        if eip.port_id:
            port = session.get(Port, eip.port_id)
            fixed[eip.id] = port.ip_address if port else None
    return [eip_view(eip, fixed.get(eip.id)) for eip in rows]


@router.post("/v1/{project_id}/publicips")
def create_publicip(
    project_id: str, body: PublicipCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    ctx = request_ctx(request)
    opt, bw = body.publicip, body.bandwidth
    with session_scope(ctx.engine) as session:
        eip = eips.create_eip(
            session,
            ctx.settings,
            caller.project_id,
            type_=opt.type,
            ip_address=opt.ip_address,
            ip_version=opt.ip_version,
            alias=opt.alias,
            bandwidth_name=bw.name,
            bandwidth_size=bw.size,
            share_type=bw.share_type,
        )
        if opt.port_id:
            eips.bind(session, caller.project_id, eip, opt.port_id)
        host = eips.port_host(session, eip.port_id)
        view = _views(session, [eip])[0]
    eips.push_external(ctx, [host])
    return {"publicip": view}


@router.get("/v1/{project_id}/publicips")
def list_publicips(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = None,
    marker: str | None = None,
    id: IdList = None,
    port_id: IdList = None,
    public_ip_address: IdList = None,
) -> dict[str, Any]:
    with session_scope(request_ctx(request).engine) as session:
        rows = eips.list_eips(
            session,
            caller.project_id,
            ids=id,
            port_ids=port_id,
            addresses=public_ip_address,
            marker=marker,
            limit=limit,
        )
        return {"publicips": _views(session, rows)}


@router.get("/v1/{project_id}/publicips/{publicip_id}")
def show_publicip(
    project_id: str, publicip_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with session_scope(request_ctx(request).engine) as session:
        return {"publicip": _views(session, [eips.get_eip(session, caller.project_id, publicip_id)])[0]}


@router.put("/v1/{project_id}/publicips/{publicip_id}")
def update_publicip(
    project_id: str, publicip_id: str, body: PublicipUpdateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    """`port_id` binds; `port_id` null or "" unbinds; a body without `port_id` keeps the binding."""
    ctx = request_ctx(request)
    opt = body.publicip
    hosts: list[str | None] = []
    with session_scope(ctx.engine) as session:
        eip = eips.get_eip(session, caller.project_id, publicip_id)
        if opt.ip_version not in (None, 4):
            raise eips.BadRequest(
                f"Invalid ip_version {opt.ip_version}: only IPv4 EIPs exist here", code=eips.BAD
            )
        if "port_id" in opt.model_fields_set:
            hosts.append(eips.port_host(session, eip.port_id))
            eips.bind(session, caller.project_id, eip, opt.port_id or None)
            hosts.append(eips.port_host(session, eip.port_id))
        if opt.alias is not None:
            eip.alias = opt.alias
            session.add(eip)
        view = _views(session, [eip])[0]
    eips.push_external(ctx, hosts)
    return {"publicip": view}


@router.delete("/v1/{project_id}/publicips/{publicip_id}", status_code=204)
def delete_publicip(project_id: str, publicip_id: str, caller: ProjectCaller, request: Request) -> Response:
    with session_scope(request_ctx(request).engine) as session:
        eips.delete_eip(session, caller.project_id, publicip_id)
    return Response(status_code=204)

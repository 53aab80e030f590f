"""VPC v1 subnets: create, list and show under `/v1/{project_id}/subnets`, update and delete under the VPC."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, StrictBool

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.errors import BadRequest
from controller.models.common import iso_z
from controller.models.network import Subnet
from controller.services import network_push, networks

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1, le=2000)]


class SubnetCreate(BaseModel):
    name: str
    cidr: str
    gateway_ip: str
    vpc_id: str
    description: str | None = None
    dhcp_enable: StrictBool = True  # the SDK casts with bool(): only a real JSON boolean is unambiguous
    primary_dns: str | None = None
    secondary_dns: str | None = None
    dns_list: list[str] | None = Field(default=None, alias="dnsList")
    availability_zone: str | None = None
    ipv6_enable: StrictBool = False


class SubnetCreateBody(BaseModel):
    subnet: SubnetCreate


class SubnetUpdate(BaseModel):
    name: str | None = None
    description: str | None = None
    dhcp_enable: StrictBool | None = None
    primary_dns: str | None = None
    secondary_dns: str | None = None
    dns_list: list[str] | None = Field(default=None, alias="dnsList")


class SubnetUpdateBody(BaseModel):
    subnet: SubnetUpdate


def subnet_view(subnet: Subnet) -> dict[str, Any]:
    return {
        "id": subnet.id,
        "name": subnet.name,
        "description": subnet.description,
        "cidr": subnet.cidr,
        "gateway_ip": subnet.gateway_ip,
        "ipv6_enable": False,
        "dhcp_enable": subnet.dhcp_enable,
        "primary_dns": subnet.primary_dns,
        "secondary_dns": subnet.secondary_dns,
        "dnsList": subnet.dns,
        "availability_zone": subnet.availability_zone,
        "vpc_id": subnet.vpc_id,
        "status": subnet.status,
        # No separate Neutron objects here: the subnet id is both the network and the subnet id.
        "neutron_network_id": subnet.id,
        "neutron_subnet_id": subnet.id,
        "extra_dhcp_opts": [],
        "scope": "center",
        "tenant_id": subnet.project_id,
        "created_at": iso_z(subnet.created_at),
        "updated_at": iso_z(subnet.updated_at),
    }


@router.post("/v1/{project_id}/subnets")
def create_subnet(
    project_id: str, body: SubnetCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.subnet
    if opt.ipv6_enable:
        raise BadRequest("IPv6 subnets are not supported", code=networks.BAD)
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        subnet = networks.create_subnet(
            session,
            caller.project_id,
            vpc_id=opt.vpc_id,
            name=opt.name,
            cidr=opt.cidr,
            gateway_ip=opt.gateway_ip,
            dhcp_enable=opt.dhcp_enable,
            primary_dns=opt.primary_dns,
            secondary_dns=opt.secondary_dns,
            dns_list=opt.dns_list,
            availability_zone=opt.availability_zone or ctx.settings.default_availability_zone,
            description=opt.description,
        )
        return {"subnet": subnet_view(subnet)}


@router.get("/v1/{project_id}/subnets")
def list_subnets(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = None,
    marker: str | None = None,
    vpc_id: str | None = None,
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        subnets = networks.list_subnets(session, caller.project_id, vpc_id=vpc_id, marker=marker, limit=limit)
        return {"subnets": [subnet_view(s) for s in subnets]}


@router.get("/v1/{project_id}/subnets/{subnet_id}")
def show_subnet(project_id: str, subnet_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        return {"subnet": subnet_view(networks.get_subnet(session, caller.project_id, subnet_id))}


@router.put("/v1/{project_id}/vpcs/{vpc_id}/subnets/{subnet_id}")
def update_subnet(
    project_id: str,
    vpc_id: str,
    subnet_id: str,
    body: SubnetUpdateBody,
    caller: ProjectCaller,
    request: Request,
) -> dict[str, Any]:
    opt = body.subnet
    with session_scope(request.app.state.ctx.engine) as session:
        subnet = networks.update_subnet(
            session,
            caller.project_id,
            vpc_id,
            subnet_id,
            name=opt.name,
            description=opt.description,
            dhcp_enable=opt.dhcp_enable,
            primary_dns=opt.primary_dns,
            secondary_dns=opt.secondary_dns,
            dns_list=opt.dns_list,
        )
        answer = {"subnet": {"id": subnet.id, "status": subnet.status}}
    network_push.push_network(request.app.state.ctx, vpc_id)  # committed: now the hosts' dnsmasq
    return answer


@router.delete("/v1/{project_id}/vpcs/{vpc_id}/subnets/{subnet_id}", status_code=204)
def delete_subnet(
    project_id: str, vpc_id: str, subnet_id: str, caller: ProjectCaller, request: Request
) -> Response:
    with session_scope(request.app.state.ctx.engine) as session:
        networks.delete_subnet(session, caller.project_id, vpc_id, subnet_id)
    network_push.push_network(request.app.state.ctx, vpc_id)  # its gateway and DHCP range leave the routers
    return Response(status_code=204)

"""VPC v1 security groups (`/v1/{project_id}/security-groups`) and their rules (`…/security-group-rules`).

A rule change is committed first, then pushed to the agents hosting servers in that group (best effort; the
reconciler repairs a host that missed it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, StrictInt

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.models.network import SecurityGroup, SecurityGroupRule
from controller.services import networks, quotas

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1, le=2000)]


class SecurityGroupCreate(BaseModel):
    name: str
    description: str | None = None
    vpc_id: str | None = None
    enterprise_project_id: str | None = None


class SecurityGroupCreateBody(BaseModel):
    security_group: SecurityGroupCreate


class RuleCreate(BaseModel):
    security_group_id: str
    direction: str
    ethertype: str | None = None
    protocol: str | None = None
    port_range_min: StrictInt | None = None
    port_range_max: StrictInt | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    description: str | None = None


class RuleCreateBody(BaseModel):
    security_group_rule: RuleCreate


def rule_view(rule: SecurityGroupRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "description": rule.description,
        "security_group_id": rule.security_group_id,
        "direction": rule.direction,
        "ethertype": rule.ethertype,
        "protocol": rule.protocol,
        "port_range_min": rule.port_range_min,
        "port_range_max": rule.port_range_max,
        "remote_ip_prefix": rule.remote_ip_prefix,
        "remote_group_id": rule.remote_group_id,
        "remote_address_group_id": None,
        "tenant_id": rule.project_id,
    }


def group_view(group: SecurityGroup, rules: list[SecurityGroupRule]) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "vpc_id": group.vpc_id,
        "enterprise_project_id": "0",
        "security_group_rules": [rule_view(r) for r in rules],
    }


@router.post("/v1/{project_id}/security-groups")
def create_security_group(
    project_id: str, body: SecurityGroupCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.security_group
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        group = networks.create_security_group(
            session, caller.project_id, name=opt.name, description=opt.description, vpc_id=opt.vpc_id
        )
        quotas.check_added(session, ctx.settings, caller.project_id, "security_groups")
        return {"security_group": group_view(group, networks.rules_of(session, [group.id])[group.id])}


@router.get("/v1/{project_id}/security-groups")
def list_security_groups(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = None,
    marker: str | None = None,
    vpc_id: str | None = None,
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        # Like Huawei, every project has its default group; it appears on the first look.
        networks.ensure_default_security_group(session, caller.project_id)
        groups = networks.list_security_groups(
            session, caller.project_id, vpc_id=vpc_id, marker=marker, limit=limit
        )
        rules = networks.rules_of(session, [g.id for g in groups])
        return {"security_groups": [group_view(g, rules[g.id]) for g in groups]}


@router.get("/v1/{project_id}/security-groups/{group_id}")
def show_security_group(
    project_id: str, group_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        group = networks.get_security_group(session, caller.project_id, group_id)
        return {"security_group": group_view(group, networks.rules_of(session, [group.id])[group.id])}


@router.delete("/v1/{project_id}/security-groups/{group_id}", status_code=204)
def delete_security_group(
    project_id: str, group_id: str, caller: ProjectCaller, request: Request
) -> Response:
    with session_scope(request.app.state.ctx.engine) as session:
        networks.delete_security_group(session, caller.project_id, group_id)
    return Response(status_code=204)


@router.post("/v1/{project_id}/security-group-rules")
def create_rule(
    project_id: str, body: RuleCreateBody, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    opt = body.security_group_rule
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        rule = networks.create_rule(
            session,
            caller.project_id,
            security_group_id=opt.security_group_id,
            direction=opt.direction,
            ethertype=opt.ethertype,
            protocol=opt.protocol,
            port_range_min=opt.port_range_min,
            port_range_max=opt.port_range_max,
            remote_ip_prefix=opt.remote_ip_prefix,
            remote_group_id=opt.remote_group_id,
            description=opt.description,
        )
        view = rule_view(rule)
    networks.notify_security_groups(ctx, [rule.security_group_id])
    return {"security_group_rule": view}


@router.get("/v1/{project_id}/security-group-rules")
def list_rules(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = None,
    marker: str | None = None,
    security_group_id: str | None = None,
    remote_ip_prefix: str | None = None,
) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        rules = networks.list_rules(
            session,
            caller.project_id,
            security_group_id=security_group_id,
            remote_ip_prefix=remote_ip_prefix,
            marker=marker,
            limit=limit,
        )
        return {"security_group_rules": [rule_view(r) for r in rules]}


@router.get("/v1/{project_id}/security-group-rules/{rule_id}")
def show_rule(project_id: str, rule_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with session_scope(request.app.state.ctx.engine) as session:
        return {"security_group_rule": rule_view(networks.get_rule(session, caller.project_id, rule_id))}


@router.delete("/v1/{project_id}/security-group-rules/{rule_id}", status_code=204)
def delete_rule(project_id: str, rule_id: str, caller: ProjectCaller, request: Request) -> Response:
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        group_id = networks.delete_rule(session, caller.project_id, rule_id)
    networks.notify_security_groups(ctx, [group_id])
    return Response(status_code=204)

"""A server's security groups on the Nova path the ECS SDK uses.

`POST /v2.1/{project_id}/servers/{server_id}/action` with `addSecurityGroup` or `removeSecurityGroup` (`{"name":
<group name or id>}`, answered 202 with no body once the server's host enforces it), and
`GET /v2.1/{project_id}/servers/{server_id}/os-security-groups` (Nova's shape of the groups and their rules).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from controller.auth.deps import ProjectCaller
from controller.db import session_scope
from controller.errors import BadRequest
from controller.models.network import SecurityGroup, SecurityGroupRule
from controller.services import networks, server_security_groups

router = APIRouter()


class GroupName(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str = Field(min_length=1, max_length=255)


class NovaActionIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)

    add: GroupName | None = Field(default=None, alias="addSecurityGroup")
    remove: GroupName | None = Field(default=None, alias="removeSecurityGroup")


@router.post("/v2.1/{project_id}/servers/{server_id}/action", status_code=202)
def server_action(
    project_id: str, server_id: str, body: NovaActionIn, caller: ProjectCaller, request: Request
) -> Response:
    if (body.add is None) == (body.remove is None):
        raise BadRequest("Give exactly one action: addSecurityGroup or removeSecurityGroup")
    server_security_groups.change_groups(
        request.app.state.ctx,
        caller.project_id,
        server_id,
        add=body.add.name if body.add else None,
        remove=body.remove.name if body.remove else None,
    )
    return Response(status_code=202)


def _nova_rule(rule: SecurityGroupRule, groups: dict[str, SecurityGroup]) -> dict[str, Any]:
    remote = groups.get(rule.remote_group_id or "")
    return {
        "id": rule.id,
        "parent_group_id": rule.security_group_id,
        "ip_protocol": rule.protocol,
        "from_port": rule.port_range_min,
        "to_port": rule.port_range_max,
        "ip_range": {"cidr": rule.remote_ip_prefix} if rule.remote_ip_prefix else {},
        "group": {"name": remote.name, "tenant_id": remote.project_id} if remote else {},
    }


@router.get("/v2.1/{project_id}/servers/{server_id}/os-security-groups")
def list_server_groups(project_id: str, server_id: str, caller: ProjectCaller, request: Request) -> Any:
    groups = server_security_groups.server_groups(request.app.state.ctx, caller.project_id, server_id)
    with session_scope(request.app.state.ctx.engine) as session:
        rules = networks.rules_of(session, [g.id for g in groups])
        remote_ids = {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id}
        remotes = {gid: g for gid in remote_ids if (g := session.get(SecurityGroup, gid)) is not None}
        return {
            "security_groups": [
                {
                    "id": g.id,
                    "name": g.name,
                    "description": g.description,
                    "tenant_id": g.project_id,
                    # Nova lists ingress rules only (it has no egress rules).
                    "rules": [_nova_rule(r, remotes) for r in rules[g.id] if r.direction == "ingress"],
                }
                for g in groups
            ]
        }

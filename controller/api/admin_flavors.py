"""Operator API for flavors (admin credentials only, anyone else 403).

`POST /v1/admin/flavors` (`{"flavor": {"name", "vcpus", "ram" (MiB), "disk" (GiB, default 0), "id"?}}`, 201 with
the flavor as `GET …/cloudservers/flavors` shows it; 409 if the id or name exists) and
`DELETE /v1/admin/flavors/{flavor_id}` (204; 404 `Ecs.0038` when unknown, 409 while servers use it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from controller.api.admin import AdminCaller
from controller.api.flavors import availability_zones, flavor_view
from controller.api.request_context import request_ctx
from controller.db import session_scope
from controller.services import flavor_admin
from controller.services.flavor_admin import FlavorBody

router = APIRouter()


@router.post("/v1/admin/flavors", status_code=201)
def create_flavor(body: FlavorBody, caller: AdminCaller, request: Request) -> dict[str, Any]:
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        flavor = flavor_admin.create_flavor(session, body.flavor)
        return {"flavor": flavor_view(flavor, availability_zones(session, ctx))}


@router.delete("/v1/admin/flavors/{flavor_id}", status_code=204)
def delete_flavor(flavor_id: str, caller: AdminCaller, request: Request) -> Response:
    with session_scope(request_ctx(request).engine) as session:
        flavor_admin.delete_flavor(session, flavor_id)
    return Response(status_code=204)

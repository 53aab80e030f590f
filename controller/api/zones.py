"""Availability zones: `GET /v1/{project_id}/availability-zones` (the SDK's `list_server_az_info`).

The SDK's `ListServerAzInfo` has no state field, so availability goes in `mode` ("enable" / "disable")
and, for clients that read the raw JSON, in `zone_state.available` as Nova reports it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session

from controller.auth.deps import ProjectCaller
from controller.context import ControllerContext
from controller.services.zones import Zone, list_zones

router = APIRouter()


def zone_view(zone: Zone) -> dict[str, Any]:
    return {
        "availability_zone_id": zone.name,
        "alias": zone.name,
        "type": "core",
        "mode": "enable" if zone.available else "disable",
        "public_border_group": "center",
        "az_group_ids": [],
        "category": 0,
        "zone_state": {"available": zone.available},
    }


@router.get("/v1/{project_id}/availability-zones")
def list_availability_zones(request: Request, _: ProjectCaller) -> dict[str, Any]:
    ctx: ControllerContext = request.app.state.ctx
    with Session(ctx.engine) as session:
        zones = list_zones(session, ctx.settings.host_dead_seconds)
    return {"availability_zones": [zone_view(z) for z in zones]}

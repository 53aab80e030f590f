"""Flavors: `GET /v1/{project_id}/cloudservers/flavors` and `…/resize_flavors`.

This router is included before the servers router, so these literal paths win over `/cloudservers/{id}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlmodel import Session, select

from controller.auth.deps import ProjectCaller
from controller.context import ControllerContext
from controller.errors import BadRequest
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.image import Image
from controller.services import flavors
from controller.services.server_resize import flavor_misfit
from controller.services.servers import get_server

router = APIRouter()

Limit = Annotated[int | None, Query(ge=1, le=1000)]


def extra_specs(flavor: Flavor, zones: list[str]) -> dict[str, str]:
    return {
        "ecs:performancetype": flavor.performancetype,
        "ecs:generation": flavor.id.split(".", 1)[0],
        "ecs:virtualization_env_types": "CloudCompute",
        "resource_type": "IOoptimizedS6",
        "cond:operation:status": "normal",
        "cond:operation:az": ",".join(f"{z}(normal)" for z in zones),
    }


def flavor_view(flavor: Flavor, zones: list[str], *, specs_key: str = "os_extra_specs") -> dict[str, Any]:
    # Types as the SDK casts them: vcpus, disk and swap are strings, ram an int.
    return {
        "id": flavor.id,
        "name": flavor.name,
        "vcpus": str(flavor.vcpus),
        "ram": flavor.ram_mib,
        "disk": str(flavor.disk_gib),
        "swap": "",
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "OS-FLV-DISABLED:disabled": flavor.disabled,
        "os-flavor-access:is_public": flavor.is_public,
        "rxtx_factor": 1.0,
        "links": [],
        specs_key: extra_specs(flavor, zones),
    }


def availability_zones(session: Session, ctx: ControllerContext) -> list[str]:
    hosts = session.exec(select(Host.availability_zone).where(Host.enabled == True)).all()  # noqa: E712
    return sorted({ctx.settings.default_availability_zone, *hosts})


def _after(items: list[Flavor], marker: str | None, limit: int | None) -> list[Flavor]:
    if marker:
        ids = [f.id for f in items]
        if marker not in ids:
            raise BadRequest(f"Invalid marker {marker!r}: no such flavor")
        items = items[ids.index(marker) + 1 :]
    return items[:limit] if limit else items


@router.get("/v1/{project_id}/cloudservers/flavors")
def list_flavors(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    availability_zone: str | None = None,
    flavor_id: str | None = None,
    limit: Limit = None,
    marker: str | None = None,
) -> dict[str, Any]:
    ctx: ControllerContext = request.app.state.ctx
    with Session(ctx.engine) as session:
        zones = availability_zones(session, ctx)
        if availability_zone and availability_zone not in zones:
            return {"flavors": []}
        found = _after(flavors.list_flavors(session, flavor_id=flavor_id), marker, limit)
        return {"flavors": [flavor_view(f, zones) for f in found]}


@router.get("/v1/{project_id}/cloudservers/resize_flavors")
def list_resize_flavors(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    source_flavor_id: str | None = None,
    source_flavor_name: str | None = None,
    instance_uuid: str | None = None,
    limit: Limit = None,
    marker: str | None = None,
) -> dict[str, Any]:
    """Every enabled flavor but the source one; with `instance_uuid` (404 unless it is one of the project's
    servers), only those that server can be resized to: not its own, no smaller root disk, enough memory for
    its image. The host's capacity is checked by the resize itself."""
    ctx: ControllerContext = request.app.state.ctx
    with Session(ctx.engine) as session:
        zones = availability_zones(session, ctx)
        found = [
            f
            for f in flavors.list_flavors(session)
            if f.id != source_flavor_id and f.name != source_flavor_name
        ]
        if instance_uuid:
            server = get_server(session, caller.project_id, instance_uuid)
            image = session.get(Image, server.image_id)
            found = [f for f in found if flavor_misfit(server, f, image) is None]
        found = _after(found, marker, limit)
        return {
            "flavors": [
                {**flavor_view(f, zones, specs_key="extra_specs"), "instance_quota": {}} for f in found
            ]
        }

"""ECS `block_device`: the data volumes of a server as block devices, with their size and bus.

`GET …/cloudservers/{id}/block_device` (the SDK's `list_server_block_devices`) and Huawei's documented
`…/block_device/extendinfo` answer the same; `…/block_device/{volume_id}` shows one. The literal `extendinfo`
is declared before `{volume_id}`. labcloud's data volumes are virtio-blk disks (vdb … vdz); the root disk is
no EVS volume here, so it is not listed. `pciAddress` is left empty: the controller does not track where
libvirt put each disk on the guest's PCI bus.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlmodel import Session

from controller.api.request_context import request_ctx
from controller.auth.deps import ProjectCaller
from controller.errors import NotFound
from controller.models.volume import Volume
from controller.services import servers
from controller.services.volume_views import attached_volumes
from controller.services.volumes import MAX_DATA_VOLUMES, VOLUME_NOT_FOUND

router = APIRouter()


def block_device(volume: Volume) -> dict[str, Any]:
    """One `ServerBlockDevice` (bootIndex and size are ints in the SDK model)."""
    return {
        "id": volume.id,
        "volumeId": volume.id,
        "serverId": volume.server_id or "",
        "device": volume.device or "",
        "bootIndex": -1,
        "size": volume.size,
        "bus": "virtio",
        "pciAddress": "",
    }


def _list(request: Request, project_id: str, server_id: str) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        server = servers.get_server(session, project_id, server_id)
        attached = attached_volumes(session, [server.id])[server.id]
    free = MAX_DATA_VOLUMES - len(attached)
    return {
        "attachableQuantity": {"free_scsi": 0, "free_blk": free, "free_disk": free},
        "volumeAttachments": [block_device(v) for v in attached],
    }


@router.get("/v1/{project_id}/cloudservers/{server_id}/block_device")
def list_block_devices(
    project_id: str, server_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    return _list(request, caller.project_id, server_id)


@router.get("/v1/{project_id}/cloudservers/{server_id}/block_device/extendinfo")
def list_block_devices_extended(
    project_id: str, server_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    return _list(request, caller.project_id, server_id)


@router.get("/v1/{project_id}/cloudservers/{server_id}/block_device/{volume_id}")
def show_block_device(
    project_id: str, server_id: str, volume_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        server = servers.get_server(session, caller.project_id, server_id)
        attached = {v.id: v for v in attached_volumes(session, [server.id])[server.id]}
    volume = attached.get(volume_id)
    if volume is None:
        raise NotFound(f"Volume[{volume_id}] is not attached to server {server.id}.", code=VOLUME_NOT_FOUND)
    return {"volumeAttachment": block_device(volume)}

"""The EVS VolumeDetail shape and the ECS attachment shapes.

Keys and JSON types follow `huaweicloudsdkevs.v2.model.VolumeDetail` and the ECS attachment models: `size`
is an int, `bootable` and `shareable` are strings, `multiattach` and `encrypted` real booleans.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from controller.models.common import iso_z
from controller.models.volume import Volume
from controller.services.volume_state import DETACHING, IN_USE


def volume_detail(volume: Volume, endpoint: str, host_name: str = "") -> dict[str, Any]:
    return {
        "id": volume.id,
        "name": volume.name,
        "description": volume.description,
        "status": volume.status,
        "size": volume.size,
        "volume_type": volume.volume_type,
        "availability_zone": volume.availability_zone,
        "attachments": [evs_attachment(volume, host_name)] if volume.server_id and volume.device else [],
        "bootable": volume.bootable,
        "shareable": "false",
        "multiattach": volume.multiattach,
        "encrypted": False,
        "metadata": dict(volume.meta),
        "tags": {},
        "links": [{"href": f"{endpoint}/v2/{volume.project_id}/volumes/{volume.id}", "rel": "self"}],
        "created_at": iso_z(volume.created_at, millis=True),
        "updated_at": iso_z(volume.updated_at, millis=True),
        "os-vol-tenant-attr:tenant_id": volume.project_id,
        "os-vol-host-attr:host": volume.host_id or "",
        "replication_status": "disabled",
        "service_type": "EVS",
        "user_id": "",
        "snapshot_id": volume.source_id if volume.source_kind == "snapshot" else "",
        "source_volid": "",
        "wwn": "",
        "enterprise_project_id": "0",
    }


def evs_attachment(volume: Volume, host_name: str = "") -> dict[str, Any]:
    return {
        "id": volume.id,
        "attachment_id": volume.id,
        "volume_id": volume.id,
        "server_id": volume.server_id or "",
        "device": volume.device or "",
        "host_name": host_name,
        "attached_at": iso_z(volume.attached_at, millis=True) or "",
    }


def server_attachment(volume: Volume) -> dict[str, Any]:
    """One entry of `GET …/cloudservers/{id}/os-volume_attachments` (Nova's shape: id is the volume id)."""
    return {
        "id": volume.id,
        "volumeId": volume.id,
        "serverId": volume.server_id or "",
        "device": volume.device,
    }


def server_detail_volume(volume_id: str, device: str | None) -> dict[str, Any]:
    """One entry of ServerDetail's `os-extended-volumes:volumes_attached` (all strings in the SDK model)."""
    return {"id": volume_id, "device": device or "", "bootIndex": "-1", "delete_on_termination": "False"}


def attached_volumes(session: Session, server_ids: list[str]) -> dict[str, list[Volume]]:
    """The volumes attached to each server (in use, or on their way out), in device order."""
    result: dict[str, list[Volume]] = {sid: [] for sid in server_ids}
    if not server_ids:
        return result
    for volume in session.exec(_attached(select(Volume), server_ids)).all():
        result[volume.server_id or ""].append(volume)
    return result


def attached_volume_rows(session: Session, server_ids: list[str]) -> dict[str, list[tuple[str, str | None]]]:
    """`attached_volumes` as plain (id, device) tuples, what `server_detail_volume` shows, for list views."""
    result: dict[str, list[tuple[str, str | None]]] = {}
    if not server_ids:
        return result
    for volume_id, server_id, device in session.connection().execute(_ATTACHED_ROWS, {"ids": server_ids}):
        result.setdefault(server_id or "", []).append((volume_id, device))
    return result


def _attached(stmt: Any, server_ids: Any) -> Any:
    return stmt.where(
        col(Volume.server_id).in_(server_ids), col(Volume.status).in_((IN_USE, DETACHING))
    ).order_by(col(Volume.device))


# Built once: building a statement costs more than running it (see server_views).
_ATTACHED_ROWS = _attached(
    select(Volume.id, Volume.server_id, Volume.device), bindparam("ids", expanding=True)
)

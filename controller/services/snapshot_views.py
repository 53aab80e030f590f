"""The EVS snapshot shapes: `SnapshotDetails` (create, show, update) and `SnapshotList` (list detail).

`size` is an int in GiB, `metadata` an object of strings, timestamps `YYYY-MM-DDTHH:MM:SS.ffffff` (no zone),
as `huaweicloudsdkevs.v2.model` declares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.models.snapshot import Snapshot
from controller.services.snapshot_state import CREATING


def snapshot_detail(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "name": snapshot.name,
        "description": snapshot.description,
        "status": snapshot.status,
        "volume_id": snapshot.volume_id,
        "size": snapshot.size,
        "metadata": dict(snapshot.meta),
        "created_at": _timestamp(snapshot.created_at),
        "updated_at": _timestamp(snapshot.updated_at),
        "os-extended-snapshot-attributes:project_id": snapshot.project_id,
        "os-extended-snapshot-attributes:progress": "0%" if snapshot.status == CREATING else "100%",
    }


def snapshot_list_entry(snapshot: Snapshot) -> dict[str, Any]:
    return {
        **snapshot_detail(snapshot),
        "service_type": "EVS",
        "dedicated_storage_id": None,
        "dedicated_storage_name": None,
    }


def _timestamp(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")

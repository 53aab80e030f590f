"""CBR wire shapes: Vault, CheckpointCreate, BackupResp and OperationLog, as the SDK models declare them.

Some CheckpointResourceResp fields are strings where Vault's are ints (CES-CBR-API.md §5); datetimes are naive
UTC with microseconds, which the SDK parses (a `Z` is appended); `protected_at` is a date but needs a timestamp.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from controller.models.backup import OBJECT_TYPES, SERVER_TYPE, Backup, Checkpoint, OperationLog, Vault

PROVIDERS = {  # opaque, fixed per object type
    "server": "0daac4c5-6707-4851-97ba-169e36266b66",
    "disk": "d1603440-187d-4516-af25-121250c7cc97",
}


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f") if value is not None else None


def _z(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def vault_view(vault: Vault, usage: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """`usage`: resource id -> (backup count, backup bytes)."""
    used_mb = sum(size for _count, size in usage.values()) // (1024 * 1024)
    return {
        "id": vault.id,
        "name": vault.name,
        "description": vault.description,
        "project_id": vault.project_id,
        "provider_id": PROVIDERS[vault.object_type],
        "user_id": "",
        "created_at": _ts(vault.created_at),
        "enterprise_project_id": "0",
        "auto_bind": False,
        "auto_expand": False,
        "smn_notify": False,
        "threshold": 80,
        "locked": False,
        "tags": [],
        "billing": {
            "object_type": vault.object_type,
            "protect_type": "backup",
            "size": vault.size,
            "used": used_mb,
            "allocated": 0,
            "status": vault.status,
            "spec_code": f"vault.backup.{'server' if vault.object_type == 'server' else 'volume'}.normal",
            "charging_mode": "post_paid",
            "cloud_type": "public",
            "consistent_level": "crash_consistent",
            "storage_unit": "",
            "frozen_scene": "",
            "is_multi_az": False,
        },
        "resources": [
            {
                "id": r["id"],
                "name": r.get("name", ""),
                "type": r["type"],
                "protect_status": "available",
                "size": 0,
                "backup_size": usage.get(r["id"], (0, 0))[1] // (1024 * 1024),
                "backup_count": usage.get(r["id"], (0, 0))[0],
                "auto_protect": False,
                "extra_info": {"exclude_volumes": [], "include_volumes": []},
            }
            for r in vault.resources
        ],
    }


def checkpoint_view(checkpoint: Checkpoint, vault: Vault, backups: list[Backup]) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "project_id": checkpoint.project_id,
        "status": checkpoint.status,
        "created_at": _ts(checkpoint.created_at),
        "vault": {
            "id": vault.id,
            "name": vault.name,
            "resources": [
                {
                    "id": b.resource_id,
                    "name": b.resource_name,
                    "type": b.resource_type,
                    "protect_status": _protect_status(b.status),
                    "resource_size": str(b.resource_size),
                    "backup_size": str(b.size_bytes // (1024 * 1024)),
                    "backup_count": "1",
                    "extra_info": "{}",
                }
                for b in backups
            ],
            "skipped_resources": [],
        },
        "extra_info": {
            "name": checkpoint.name,
            "description": checkpoint.description,
            "retention_duration": -1,
        },
    }


def _protect_status(status: str) -> str:
    return {"protecting": "protecting", "restoring": "restoring", "error": "error"}.get(status, "available")


def backup_view(backup: Backup, kids: list[Backup], total_bytes: int | None = None) -> dict[str, Any]:
    server = backup.resource_type == SERVER_TYPE
    return {
        "id": backup.id,
        "name": backup.name,
        "description": backup.description,
        "checkpoint_id": backup.checkpoint_id,
        "vault_id": backup.vault_id,
        "project_id": backup.project_id,
        "provider_id": PROVIDERS["server" if server or backup.parent_id else "disk"],
        "parent_id": backup.parent_id or "",
        "resource_id": backup.resource_id,
        "resource_name": backup.resource_name,
        "resource_type": backup.resource_type,
        "resource_size": backup.resource_size,
        "resource_az": backup.resource_az,
        "status": backup.status,
        "image_type": "backup",
        "created_at": _ts(backup.created_at),
        "updated_at": _ts(backup.updated_at),
        "expired_at": None,
        "protected_at": _ts(backup.created_at),
        "incremental": False,
        "version": 1,
        "enterprise_project_id": "0",
        "replication_records": [],
        "extend_info": {
            "bootable": backup.system_disk,
            "system_disk": backup.system_disk,
            "contain_system_disk": server,
            "supported_restore_mode": "backup",
            "auto_trigger": False,
            "encrypted": False,
            "support_lld": False,
            "is_multi_az": False,
        },
        "children": [backup_view(k, []) for k in kids],
    }


def op_log_view(op: OperationLog) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "common": {"progress": op.progress, "request_id": "", "task_id": op.id},
        "resource": {"id": op.resource_id, "name": op.resource_name, "type": op.resource_type},
    }
    if op.operation_type == "backup":
        extra["backup"] = {"backup_id": op.backup_id, "backup_name": op.backup_name, "incremental": "false"}
    elif op.operation_type == "restore":
        extra["restore"] = {
            "backup_id": op.backup_id,
            "backup_name": op.backup_name,
            "target_resource_id": op.target_id,
            "target_resource_name": "",
        }
    elif op.operation_type == "delete":
        extra["delete"] = {"backup_id": op.backup_id, "backup_name": op.backup_name}
    view: dict[str, Any] = {
        "id": op.id,
        "operation_type": op.operation_type,
        "status": op.status,
        "checkpoint_id": op.checkpoint_id,
        "vault_id": op.vault_id,
        "vault_name": op.vault_name,
        "project_id": op.project_id,
        "provider_id": PROVIDERS["server" if op.resource_type == SERVER_TYPE else "disk"],
        "policy_id": "",
        "created_at": _z(op.created_at),
        "started_at": _z(op.started_at),
        "ended_at": _z(op.ended_at),
        "updated_at": _z(op.updated_at),
        "extra_info": extra,
    }
    if op.error_code:
        view["error_info"] = {"code": op.error_code, "message": op.error_message or ""}
    return view


assert set(PROVIDERS) == set(OBJECT_TYPES)

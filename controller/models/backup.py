"""CBR: vaults, checkpoints (one "back up now"), backups (a volume's, or a server's with one child per disk) and
operation logs (the task rows that carry progress).

A backup's data is one qcow2 per disk in the backup store (`store_key`); a server backup's own row holds no
data, its children do. Rows are kept after delete with status `deleted`, like volumes and servers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow

SERVER_TYPE, VOLUME_TYPE = "OS::Nova::Server", "OS::Cinder::Volume"
OBJECT_TYPES = {"server": SERVER_TYPE, "disk": VOLUME_TYPE}


class Vault(SQLModel, table=True):
    __tablename__ = "cbr_vault"

    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    name: str = Field(index=True)
    description: str = ""
    object_type: str  # server | disk
    size: int  # GB, as billed; labcloud does not enforce it
    status: str = Field(default="available", index=True)
    resources: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class Checkpoint(SQLModel, table=True):
    __tablename__ = "cbr_checkpoint"

    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    vault_id: str = Field(index=True)
    name: str = ""
    description: str = ""
    status: str = Field(index=True)  # protecting | available | error | deleted
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class Backup(SQLModel, table=True):
    __tablename__ = "cbr_backup"

    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    vault_id: str = Field(index=True)
    checkpoint_id: str = Field(index=True)
    parent_id: str | None = Field(default=None, index=True)  # the server backup of a disk backup
    name: str = ""
    description: str = ""
    resource_id: str = Field(index=True)  # the volume or server backed up
    resource_type: str  # OS::Nova::Server | OS::Cinder::Volume
    resource_name: str = ""
    resource_size: int = 0  # GiB
    resource_az: str = ""
    volume_id: str | None = None  # a disk backup's volume; None for a server's root disk
    system_disk: bool = False
    status: str = Field(index=True)  # protecting | available | restoring | deleting | error | deleted
    fail_reason: str | None = None
    host_id: str | None = None  # where the copy was taken (its staging lives there until uploaded)
    store_key: str | None = None  # the disk's data in the backup store; None: an empty (never written) disk
    checksum: str | None = None  # sha256 of the stored qcow2
    size_bytes: int = 0  # bytes in the store
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class OperationLog(SQLModel, table=True):
    """One CBR task: backup, restore or delete of one backup, with progress 0-100."""

    __tablename__ = "cbr_operation_log"

    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    operation_type: str = Field(index=True)  # backup | restore | delete
    status: str = Field(index=True)  # waiting | running | success | failed
    progress: int = 0
    checkpoint_id: str = ""
    vault_id: str = Field(default="", index=True)
    vault_name: str = ""
    backup_id: str = Field(default="", index=True)
    backup_name: str = ""
    resource_id: str = Field(default="", index=True)
    resource_name: str = ""
    resource_type: str = ""
    target_id: str = ""  # a restore's target volume or server
    error_code: str | None = None
    error_message: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


# --- request bodies: the SDK's models; unknown keys are ignored ---


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class BillingIn(_Body):
    object_type: str
    size: int
    protect_type: str = "backup"
    cloud_type: str = "public"
    consistent_level: str = "crash_consistent"
    charging_mode: str = "post_paid"


class ResourceIn(_Body):
    id: str
    type: str
    name: str | None = None


class VaultIn(_Body):
    name: str
    billing: BillingIn
    resources: list[ResourceIn] = PydanticField(default_factory=list)
    description: str | None = None


class CreateVaultIn(_Body):
    vault: VaultIn


class VaultUpdateIn(_Body):
    name: str | None = None
    description: str | None = None


class UpdateVaultIn(_Body):
    vault: VaultUpdateIn


class CheckpointParamsIn(_Body):
    resources: list[str] | None = None
    name: str | None = None
    description: str | None = None
    incremental: bool | None = None


class CheckpointIn(_Body):
    vault_id: str
    parameters: CheckpointParamsIn = PydanticField(default_factory=CheckpointParamsIn)


class CreateCheckpointIn(_Body):
    checkpoint: CheckpointIn


class MappingIn(_Body):
    backup_id: str
    volume_id: str


class RestoreIn(_Body):
    volume_id: str | None = None
    server_id: str | None = None
    mappings: list[MappingIn] | None = None
    power_on: bool = True


class RestoreBackupIn(_Body):
    restore: RestoreIn

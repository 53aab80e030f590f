"""EVS data volumes as the controller wants them.

A volume exists on a hypervisor host only once it is first attached: an `available` volume that was never
attached lives in this table alone (`host_id` None). From its first attach on it is a qcow2 file on that host,
and `host_id` keeps it there. Rows are kept after delete with status `deleted` and `deleted_at`, like servers.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow

VOLUME_TYPES = ("SATA", "SAS", "SSD", "GPSSD")


class Volume(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    name: str = Field(default="", index=True)
    description: str = ""
    size: int  # GiB
    volume_type: str = "SATA"
    availability_zone: str
    status: str = Field(index=True)
    host_id: str | None = Field(default=None, index=True)  # where its file lives, once first attached
    # What the file is filled from when it is first made: "image" or "snapshot" (and its id); None: empty.
    source_kind: str | None = None
    source_id: str | None = None
    server_id: str | None = Field(default=None, index=True)
    device: str | None = None  # as the API shows it: /dev/vdb
    attached_at: datetime | None = None
    bootable: str = "false"  # a string in the EVS API
    multiattach: bool = False
    # `metadata` is taken by SQLModel itself; the column keeps the API's name.
    meta: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


# --- request bodies: strict types, as the SDK models declare them; unknown keys are ignored ---


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class VolumeIn(_Body):
    availability_zone: str
    size: int
    volume_type: str
    name: str | None = None
    description: str | None = None
    count: int = 1
    image_ref: str | None = PydanticField(default=None, alias="imageRef")
    snapshot_id: str | None = None
    backup_id: str | None = None
    multiattach: bool = False
    metadata: dict[str, str] = PydanticField(default_factory=dict)


class CreateVolumeIn(_Body):
    volume: VolumeIn
    server_id: str | None = None


class VolumeUpdateIn(_Body):
    name: str | None = None
    description: str | None = None


class UpdateVolumeIn(_Body):
    volume: VolumeUpdateIn


class VolumeAttachmentIn(_Body):
    volume_id: str = PydanticField(alias="volumeId")
    device: str | None = None


class AttachVolumeIn(_Body):
    volume_attachment: VolumeAttachmentIn = PydanticField(alias="volumeAttachment")
    dry_run: bool = False


class ExtendSizeIn(_Body):
    new_size: int


class VolumeActionIn(_Body):
    """`POST …/cloudvolumes/{id}/action`: `os-extend` is the one action EVS has there."""

    os_extend: ExtendSizeIn = PydanticField(alias="os-extend")

"""EVS snapshots: a copy of one volume at one instant.

A snapshot's data is a file on the host where its volume lives (`host_id`); a new volume made from it is made
on that host too. A volume that was never attached has no file anywhere yet: its snapshot has no host either and
records what that volume would be filled from (`source_kind`/`source_id`: an image, or None for an empty one),
which is all its data is. Rows are kept after delete with status `deleted` and `deleted_at`, like volumes.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow


class Snapshot(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    volume_id: str = Field(index=True)
    name: str = Field(default="", index=True)
    description: str = ""
    status: str = Field(index=True)
    size: int  # GiB: the volume's size when the snapshot was taken
    availability_zone: str
    host_id: str | None = Field(default=None, index=True)  # where its file lives; None: the volume had none
    source_kind: str | None = None  # host-less snapshots: what the volume would have been filled from
    source_id: str | None = None
    # `metadata` is taken by SQLModel itself; the column keeps the API's name.
    meta: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


# --- request bodies: strict types, as the SDK models declare them; unknown keys are ignored ---


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class SnapshotIn(_Body):
    volume_id: str
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] = PydanticField(default_factory=dict)
    force: bool = False


class CreateSnapshotIn(_Body):
    snapshot: SnapshotIn


class SnapshotUpdateIn(_Body):
    name: str | None = None
    description: str | None = None


class UpdateSnapshotIn(_Body):
    snapshot: SnapshotUpdateIn


class RollbackIn(_Body):
    volume_id: str
    name: str | None = None


class RollbackSnapshotIn(_Body):
    rollback: RollbackIn

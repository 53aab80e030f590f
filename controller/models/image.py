"""IMS images. A public image (owner None) is visible to every project, a private one only to its owner.

The file lives in the controller's image store (`settings.image_dir/<id>.qcow2`); agents fetch it by URL and
cache it under its sha256 `checksum`, so a file is replaced by rename, never rewritten in place.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow

ACTIVE, QUEUED, SAVING, DELETED, KILLED = "active", "queued", "saving", "deleted", "killed"
# killed: an import or a capture failed; the row stays (with nothing in the store) so the user sees what
# happened next to the job's fail_reason, until they delete it.


class Image(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True)
    owner: str | None = Field(default=None, index=True)  # project id; None for public images
    visibility: str = "private"  # public | private
    status: str = Field(default=QUEUED, index=True)
    disk_format: str = "qcow2"
    container_format: str = "bare"
    min_disk: int = 0  # GiB
    min_ram: int = 0  # MiB
    size: int = 0  # bytes
    virtual_size: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # bytes the guest sees
    checksum: str | None = Field(default=None, index=True)  # sha256 hex of the file
    os_type: str = "Linux"
    os_version: str = ""
    platform: str = "Other"
    imagetype: str = "private"  # gold (public) | private
    file_path: str | None = None
    description: str = ""
    protected: bool = False
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    # where the file came from: "url,<url>", "upload", "instance,<server id>" (IMS's __data_origin)
    data_origin: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


# --- request bodies: strict types, as the IMS SDK models declare them; unknown keys are ignored ---


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TagIn(_Body):
    key: str
    value: str = ""


class CreateImageIn(_Body):
    """`POST /v2/cloudimages/action`: a private image from a server (`instance_id`) or from a file at
    `image_url` (Huawei: an OBS object; labcloud: an http(s) URL, optionally ending in `#sha256=<hex>`)."""

    name: str
    instance_id: str | None = None
    image_url: str | None = None
    description: str | None = None
    min_disk: int | None = None
    min_ram: int | None = None
    os_version: str | None = None
    tags: list[str] = PydanticField(default_factory=list)
    image_tags: list[TagIn] = PydanticField(default_factory=list)
    data_images: list[dict[str, Any]] = PydanticField(default_factory=list)


class GlanceImageIn(_Body):
    """`POST /v2/images`: an image record (queued) whose file is then uploaded to `PUT /v2/images/{id}/file`."""

    name: str
    container_format: str = "bare"
    disk_format: str = "qcow2"
    min_disk: int = 0
    min_ram: int = 0
    os_version: str | None = None
    protected: bool = False
    tags: list[str] = PydanticField(default_factory=list)
    visibility: str = "private"


class RegisterImageIn(_Body):
    """`PUT /v1/cloudimages/{image_id}/upload`: fill a queued image from a file at `image_url`."""

    image_url: str


class PatchOp(_Body):
    """One JSON-patch operation of `PATCH /v2/cloudimages/{id}` and `PATCH /v2/images/{id}`."""

    op: str
    path: str
    value: Any = None

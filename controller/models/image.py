"""IMS images. A public image (owner None) is visible to every project, a private one only to its owner.

The file lives in the controller's image store (`settings.image_dir/<id>.qcow2`); agents fetch it by URL and
cache it under its sha256 `checksum`, so a file is replaced by rename, never rewritten in place.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow

ACTIVE, QUEUED, SAVING, DELETED, KILLED = "active", "queued", "saving", "deleted", "killed"


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
    checksum: str | None = Field(default=None, index=True)  # sha256 hex of the file
    os_type: str = "Linux"
    os_version: str = ""
    platform: str = "Other"
    imagetype: str = "private"  # gold (public) | private
    file_path: str | None = None
    description: str = ""
    protected: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)

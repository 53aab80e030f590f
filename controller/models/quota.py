"""Per-project quota overrides and the client tokens that make server creation idempotent."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import utcnow


class Quota(SQLModel, table=True):
    """A project's limits where they differ from the Settings defaults: None means the default, -1 unlimited."""

    project_id: str = Field(foreign_key="project.id", primary_key=True)
    instances: int | None = None
    cores: int | None = None
    ram: int | None = None  # MiB
    security_groups: int | None = None
    key_pairs: int | None = None
    volumes: int | None = None  # EVS
    gigabytes: int | None = None  # EVS, GiB over all volumes
    eips: int | None = None  # EIP v1 publicips
    updated_at: datetime = Field(default_factory=utcnow)


class ClientToken(SQLModel, table=True):
    """The answer a create with `X-Client-Token` got, replayed to a retry with the same token and body."""

    project_id: str = Field(primary_key=True)
    token: str = Field(primary_key=True)
    body_sha256: str
    job_id: str
    server_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)

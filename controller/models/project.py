"""Tenants, their AK/SK credentials, and the per-host tokens agents join with."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.models.common import new_hex_id, utcnow


class Project(SQLModel, table=True):
    id: str = Field(default_factory=new_hex_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Credential(SQLModel, table=True):
    access_key: str = Field(primary_key=True)
    secret_key: str
    project_id: str = Field(foreign_key="project.id", index=True)
    user_id: str = Field(default_factory=new_hex_id)
    is_admin: bool = False
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class JoinToken(SQLModel, table=True):
    """An admin-issued secret one agent registers and heartbeats with; only its sha256 is kept.

    `host_id` is the host it is bound to: given when issued, or set by the first registration. An unbound token
    is refused after `expires_at`; a bound one works until revoked.
    """

    id: str = Field(default_factory=new_hex_id, primary_key=True)
    token_sha256: str = Field(unique=True)
    host_id: str | None = Field(default=None, index=True)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    used_at: datetime | None = None  # the first registration with it
    revoked_at: datetime | None = None

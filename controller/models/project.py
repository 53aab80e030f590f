"""Tenants and their AK/SK credentials."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from controller.models.common import new_hex_id, utcnow


class Project(SQLModel, table=True):
    id: str = Field(default_factory=new_hex_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class Credential(SQLModel, table=True):
    access_key: str = Field(primary_key=True)
    secret_key: str
    project_id: str = Field(foreign_key="project.id", index=True)
    user_id: str = Field(default_factory=new_hex_id)
    is_admin: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None

"""SSH key pairs (Nova `os-keypairs`). Only the public half is stored; a generated private key is not."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from controller.models.common import utcnow


class Keypair(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_keypair_project_name"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(index=True)
    user_id: str = ""
    name: str
    public_key: str
    fingerprint: str
    type: str = "ssh"
    created_at: datetime = Field(default_factory=utcnow)

"""Server groups (Nova `os-server-groups`): a placement policy shared by the servers that join it.

A server joins at most one group, at create time (`os:scheduler_hints.group`), so membership is keyed by the
server. Member rows outlive deleted servers harmlessly: every read joins Server and skips DELETED ones.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow

ANTI_AFFINITY = "anti-affinity"


class ServerGroup(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    name: str
    policies: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ServerGroupMember(SQLModel, table=True):
    server_id: str = Field(primary_key=True)
    group_id: str = Field(index=True)

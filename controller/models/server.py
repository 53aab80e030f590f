"""Servers (ECS instances) as the controller wants them.

Rows are never removed: a deleted server keeps its row with status DELETED and `deleted_at`, and every read
filters it out. `admin_pass` lives only until the create job ends. `host_id` is the scheduler's claim: the
capacity of a host is its own minus the flavors of the servers that claim it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_id, utcnow
from controller.state import BUILD


class Server(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    project_id: str = Field(index=True)
    user_id: str = ""
    name: str = Field(index=True)
    description: str = ""
    status: str = Field(default=BUILD, index=True)
    task_state: str | None = None
    fault_code: str | None = None
    fault_message: str | None = None
    fault_at: datetime | None = None
    flavor_id: str
    image_id: str
    host_id: str | None = Field(default=None, index=True)
    availability_zone: str
    key_name: str | None = None
    vpc_id: str
    security_group_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # `metadata` is taken by SQLModel itself; the column keeps the API's name.
    meta: dict[str, str] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    tags: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    root_volume_type: str = "SATA"
    root_volume_size: int
    user_data: str | None = None  # base64, as the caller sent it
    admin_pass: str | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    launched_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def instance_name(self) -> str:
        return f"lc-{self.id}"

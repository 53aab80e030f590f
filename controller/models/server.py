"""Servers (ECS instances) as the controller wants them.

Rows are never removed: a deleted server keeps its row with status DELETED and `deleted_at`, and every read
filters it out. `admin_pass` lives only until the create job ends. `host_id` is the scheduler's claim: the
capacity of a host is its own minus the flavors of the servers that claim it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
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
        return instance_name_of(self.id)


def instance_name_of(server_id: str) -> str:
    """The libvirt domain name of a server."""
    return f"lc-{server_id}"


# --- request bodies (the API's write schemas) ---
# Strict types: the SDK sends JSON types as its models declare them, so "2" for a count is a client bug to
# report, not to guess at. Unknown keys (extendparam details, scheduler hints …) are ignored, as Huawei does.


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class NicIn(_Body):
    subnet_id: str
    ip_address: str | None = None


class RootVolumeIn(_Body):
    volumetype: str
    size: int | None = None


class GroupRefIn(_Body):
    id: str


class TagIn(_Body):
    key: str
    value: str = ""


class SchedulerHintsIn(_Body):
    group: str | None = None  # a server group id; other Huawei hints are ignored


class ServerIn(_Body):
    image_ref: str = PydanticField(alias="imageRef")
    flavor_ref: str = PydanticField(alias="flavorRef")
    name: str
    vpcid: str
    nics: list[NicIn] = PydanticField(min_length=1)
    root_volume: RootVolumeIn
    data_volumes: list[dict[str, Any]] = PydanticField(default_factory=list)
    security_groups: list[GroupRefIn] = PydanticField(default_factory=list)
    key_name: str | None = None
    admin_pass: str | None = PydanticField(default=None, alias="adminPass")
    user_data: str | None = None
    availability_zone: str | None = None
    count: int = 1
    is_auto_rename: bool = PydanticField(default=False, alias="isAutoRename")
    publicip: dict[str, Any] | None = None
    metadata: dict[str, str] = PydanticField(default_factory=dict)
    server_tags: list[TagIn] = PydanticField(default_factory=list)
    description: str | None = None
    extendparam: dict[str, Any] | None = None
    scheduler_hints: SchedulerHintsIn | None = PydanticField(default=None, alias="os:scheduler_hints")


class CreateServersIn(_Body):
    server: ServerIn
    dry_run: bool = False


class ServerRefIn(_Body):
    id: str


class DeleteServersIn(_Body):
    servers: list[ServerRefIn] = PydanticField(min_length=1)
    delete_publicip: bool = False
    delete_volume: bool = False


class BatchIn(_Body):
    servers: list[ServerRefIn] = PydanticField(min_length=1)
    type: Literal["SOFT", "HARD"] | None = None


class ServerActionIn(_Body):
    """Exactly one of `os-start`, `os-stop`, `reboot` (the route checks that)."""

    os_start: BatchIn | None = PydanticField(default=None, alias="os-start")
    os_stop: BatchIn | None = PydanticField(default=None, alias="os-stop")
    reboot: BatchIn | None = None

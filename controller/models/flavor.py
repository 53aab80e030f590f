"""Flavors: the server sizes offered, seeded at startup. `disk_gib` 0: the root size is chosen at create."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class Flavor(SQLModel, table=True):
    id: str = Field(primary_key=True)  # Huawei style: the id is the name, e.g. s6.small.1
    name: str = Field(unique=True)
    vcpus: int
    ram_mib: int
    disk_gib: int = 0
    disabled: bool = False
    is_public: bool = True
    performancetype: str = "normal"

"""Flavors made and removed by an operator (`/v1/admin/flavors`): the default catalogue leaves the root disk
to the image (disk 0), so a larger root disk for a resize needs a flavor like these.

A flavor is deleted outright (deleted servers' views do without it); while a live server uses it, or a resize
is on its way to or from it (a failed resize goes back to the old flavor), the delete is refused with 409.
"""

from __future__ import annotations

import logging
import re

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller.errors import BadRequest, Conflict
from controller.models.flavor import Flavor
from controller.models.job import FINISHED, Job
from controller.models.server import Server
from controller.services.flavors import get_flavor
from controller.services.server_resize import RESIZE_JOB
from controller.state import DELETED

log = logging.getLogger(__name__)

FLAVOR_IN_USE = "Ecs.0104"
# Huawei style ids double as names (s6.small.1); the same characters keep them safe in paths and the CLI.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_VCPUS, MIN_RAM_MIB, MAX_RAM_MIB, MAX_DISK_GIB = 128, 128, 1024 * 1024, 1024


class FlavorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    vcpus: int
    ram: int  # MiB, as in Nova's os-flavors and Huawei's flavor views
    disk: int = 0  # GiB of root disk; 0: the image's minimum (or the size asked for at create)
    id: str | None = None  # default: the name


class FlavorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flavor: FlavorIn = Field()


def create_flavor(session: Session, want: FlavorIn) -> Flavor:
    flavor_id = want.id if want.id is not None else want.name
    problems = []
    for label, value in (("name", want.name), ("id", flavor_id)):
        if not _ID.fullmatch(value):
            problems.append(f"{label} {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not 1 <= want.vcpus <= MAX_VCPUS:
        problems.append(f"vcpus {want.vcpus} must be between 1 and {MAX_VCPUS}")
    if not MIN_RAM_MIB <= want.ram <= MAX_RAM_MIB:
        problems.append(f"ram {want.ram} MiB must be between {MIN_RAM_MIB} and {MAX_RAM_MIB}")
    if not 0 <= want.disk <= MAX_DISK_GIB:
        problems.append(f"disk {want.disk} GiB must be between 0 and {MAX_DISK_GIB}")
    if problems:
        raise BadRequest("Invalid flavor: " + "; ".join(problems))
    taken = session.exec(
        select(Flavor.id).where((col(Flavor.id) == flavor_id) | (col(Flavor.name) == want.name))
    ).first()
    if taken is not None:
        raise Conflict(f"Flavor {taken} already has the id {flavor_id!r} or the name {want.name!r}.")
    flavor = Flavor(id=flavor_id, name=want.name, vcpus=want.vcpus, ram_mib=want.ram, disk_gib=want.disk)
    session.add(flavor)
    session.flush()
    log.info(
        "flavor %s created (%s vCPUs, %s MiB, %s GiB)",
        flavor.id,
        flavor.vcpus,
        flavor.ram_mib,
        flavor.disk_gib,
    )
    return flavor


def delete_flavor(session: Session, flavor_id: str) -> None:
    """404 when unknown; 409 while a live server has it or a resize moves one to it."""
    flavor = get_flavor(session, flavor_id, include_disabled=True)
    users = list(
        session.exec(
            select(Server.id).where(Server.flavor_id == flavor.id, Server.status != DELETED).limit(6)
        ).all()
    )
    resizing = [
        job.payload.get("server_id", "?")
        for job in session.exec(
            select(Job).where(Job.kind == RESIZE_JOB, col(Job.status).not_in(FINISHED))
        ).all()
        if flavor.id in (job.payload.get("new_flavor_id"), job.payload.get("old_flavor_id"))
    ]
    if users or resizing:
        servers = ", ".join(dict.fromkeys([*users[:5], *resizing]))
        raise Conflict(
            f"Flavor {flavor.id} is in use by servers ({servers}{', …' if len(users) > 5 else ''}); "
            "resize or delete them first.",
            code=FLAVOR_IN_USE,
        )
    session.delete(flavor)
    session.flush()
    log.info("flavor %s deleted", flavor.id)

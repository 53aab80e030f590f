"""Project quotas: the limits (Settings defaults, overridden per project), what is in use, and enforcement.

Enforcement runs after the new rows are flushed, inside the transaction that adds them, and counts them too.
Before counting, `lock_project` writes the project row: on SQLite that write (or the earlier flush) holds the
database write lock, so concurrent creates are serialised and each count sees the rows the others committed;
on PostgreSQL the row lock does the same (under READ COMMITTED the count after the lock sees what the
previous holder committed). Either way, 50 parallel creates against a quota of 10 let at most 10 through.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from controller.config import Settings
from controller.errors import NotFound, QuotaExceeded
from controller.models.common import utcnow
from controller.models.eip import Eip
from controller.models.flavor import Flavor
from controller.models.keypair import Keypair
from controller.models.network import SecurityGroup
from controller.models.project import Project
from controller.models.quota import Quota
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services.volume_state import DELETED as VOLUME_DELETED
from controller.state import DELETED

log = logging.getLogger(__name__)

UNLIMITED = -1
# To add a resource (EIPs next): a column on Quota, a Settings default, a field on Limits, its count in
# `get_usage`, a `check_added` call where it is created, and the admin API's QuotaIn.
RESOURCES = ("instances", "cores", "ram", "security_groups", "key_pairs", "volumes", "gigabytes", "eips")

# Huawei's ECS quota code; the VPC one is labcloud's choice in the same pattern.
ECS_QUOTA = "Ecs.0105"
VPC_QUOTA = "VPC.0105"
EVS_QUOTA = "EVS.0105"


@dataclass(frozen=True)
class Limits:
    """Numbers per resource (RAM in MiB); as limits, -1 means unlimited."""

    instances: int
    cores: int
    ram: int
    security_groups: int
    key_pairs: int
    volumes: int
    gigabytes: int
    eips: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def defaults(settings: Settings) -> Limits:
    return Limits(
        instances=settings.quota_instances,
        cores=settings.quota_cores,
        ram=settings.quota_ram_mib,
        security_groups=settings.quota_security_groups,
        key_pairs=settings.quota_key_pairs,
        volumes=settings.quota_volumes,
        gigabytes=settings.quota_gigabytes,
        eips=settings.quota_eips,
    )


def get_limits(session: Session, settings: Settings, project_id: str) -> Limits:
    base = defaults(settings).as_dict()
    row = session.get(Quota, project_id)
    if row is not None:
        base.update({r: getattr(row, r) for r in RESOURCES if getattr(row, r) is not None})
    return Limits(**base)


def set_limits(session: Session, project_id: str, changes: dict[str, int | None]) -> None:
    """Override some of a project's limits; None goes back to the default. Unknown projects are 404."""
    if session.get(Project, project_id) is None:
        raise NotFound(f"Project {project_id} does not exist", code="Ecs.0000")
    row = session.get(Quota, project_id) or Quota(project_id=project_id)
    for resource, value in changes.items():
        setattr(row, resource, value)
    row.updated_at = utcnow()
    session.add(row)
    session.flush()
    log.info("project %s quota set: %s", project_id, changes)


def get_usage(session: Session, project_id: str) -> Limits:
    """What the project holds now; servers in any state but DELETED count (ERROR ones too, as on Huawei)."""
    instances, cores, ram = session.exec(
        select(
            func.count(col(Server.id)),
            func.coalesce(func.sum(Flavor.vcpus), 0),
            func.coalesce(func.sum(Flavor.ram_mib), 0),
        )
        .join(Flavor, col(Flavor.id) == col(Server.flavor_id))
        .where(Server.project_id == project_id, Server.status != DELETED)
    ).one()
    groups = session.exec(
        select(func.count(col(SecurityGroup.id))).where(SecurityGroup.project_id == project_id)
    ).one()
    keys = session.exec(select(func.count(col(Keypair.id))).where(Keypair.project_id == project_id)).one()
    volumes, gigabytes = session.exec(
        select(func.count(col(Volume.id)), func.coalesce(func.sum(Volume.size), 0)).where(
            Volume.project_id == project_id, Volume.status != VOLUME_DELETED
        )
    ).one()
    eips = session.exec(select(func.count(col(Eip.id))).where(Eip.project_id == project_id)).one()
    return Limits(
        int(instances), int(cores), int(ram), int(groups), int(keys), int(volumes), int(gigabytes), int(eips)
    )


def lock_project(session: Session, project_id: str) -> None:
    """Serialise quota checks of one project until the transaction ends.

    A no-op UPDATE of the project row: PostgreSQL locks the row, and on SQLite it is the write that opens the
    transaction and takes the database write lock (a SAVEPOINT before any write would commit on its own).
    """
    session.exec(
        update(Project).where(col(Project.id) == project_id).values(name=Project.name)  # type: ignore[call-overload]
    )


def check_servers_added(
    session: Session, settings: Settings, project_id: str, *, count: int, vcpus: int, ram_mib: int
) -> None:
    """Raise 403 if the servers just flushed (count of them, with these totals) take the project over quota."""
    lock_project(session, project_id)
    limits = get_limits(session, settings, project_id)
    used = get_usage(session, project_id)
    for resource, added, unit in (
        ("instances", count, ""),
        ("cores", vcpus, ""),
        ("ram", ram_mib, " MiB"),
    ):
        limit, total = getattr(limits, resource), getattr(used, resource)
        if limit != UNLIMITED and total > limit:
            log.info("project %s over its %s quota: %s%s requested", project_id, resource, added, unit)
            raise QuotaExceeded(
                f"Quota exceeded for {resource}: requested {added}{unit}, {total - added}{unit} of "
                f"{limit}{unit} already used.",
                code=ECS_QUOTA,
            )


def check_added(session: Session, settings: Settings, project_id: str, resource: str) -> None:
    """Raise 403 if the security group or key pair just flushed takes the project over its quota."""
    lock_project(session, project_id)
    limit = getattr(get_limits(session, settings, project_id), resource)
    total = getattr(get_usage(session, project_id), resource)
    if limit != UNLIMITED and total > limit:
        what = resource.replace("_", " ")
        raise QuotaExceeded(
            f"Quota exceeded for {what}: the limit is {limit}.",
            code=VPC_QUOTA if resource in ("security_groups", "eips") else ECS_QUOTA,
        )


def check_volumes_added(
    session: Session, settings: Settings, project_id: str, *, count: int, gigabytes: int, growing: int = 0
) -> None:
    """Raise 403 if the volumes just flushed (`count` of them, `gigabytes` in all) take the project over quota.

    `growing` is GiB not in the rows yet: an extend checks before its job writes the new size.
    """
    lock_project(session, project_id)
    limits = get_limits(session, settings, project_id)
    used = get_usage(session, project_id)
    for resource, added, unit, pending in (
        ("volumes", count, "", 0),
        ("gigabytes", gigabytes, " GiB", growing),
    ):
        limit, total = getattr(limits, resource), getattr(used, resource) + pending
        if added and limit != UNLIMITED and total > limit:
            log.info("project %s over its %s quota: %s%s requested", project_id, resource, added, unit)
            raise QuotaExceeded(
                f"Quota exceeded for {resource}: requested {added}{unit}, {total - added}{unit} of "
                f"{limit}{unit} already used.",
                code=EVS_QUOTA,
            )

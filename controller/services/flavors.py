"""Flavors: the default set seeded at startup, and lookups."""

from __future__ import annotations

import logging

from sqlmodel import Session, col, select

from controller.errors import NotFound
from controller.models.flavor import Flavor

log = logging.getLogger(__name__)

FLAVOR_NOT_FOUND = "Ecs.0038"

# (id, vCPUs, RAM MiB). Nothing below 128 MiB: the project's tiny image needs about 80 MiB to boot.
DEFAULT_FLAVORS: tuple[tuple[str, int, int], ...] = (
    ("s6.nano.1", 1, 128),
    ("s6.micro.1", 1, 256),
    ("s6.small.1", 1, 1024),
    ("s6.medium.2", 1, 2048),
    ("s6.large.2", 2, 4096),
    ("s6.xlarge.2", 4, 8192),
)


def seed_flavors(session: Session) -> list[Flavor]:
    """Add the default flavors that are missing; existing rows (perhaps edited by an admin) are kept."""
    existing = set(session.exec(select(Flavor.id)).all())
    added = [
        Flavor(id=fid, name=fid, vcpus=vcpus, ram_mib=ram, disk_gib=0)
        for fid, vcpus, ram in DEFAULT_FLAVORS
        if fid not in existing
    ]
    session.add_all(added)
    session.flush()
    if added:
        log.info("seeded flavors %s", ", ".join(f.id for f in added))
    return added


def list_flavors(
    session: Session, *, flavor_id: str | None = None, include_disabled: bool = False
) -> list[Flavor]:
    """Smallest first (by vCPUs, then RAM)."""
    stmt = select(Flavor)
    if flavor_id:
        stmt = stmt.where(Flavor.id == flavor_id)
    if not include_disabled:
        stmt = stmt.where(col(Flavor.disabled).is_(False))
    return list(session.exec(stmt.order_by(col(Flavor.vcpus), col(Flavor.ram_mib), col(Flavor.id))).all())


def get_flavor(session: Session, flavor_id: str, *, include_disabled: bool = False) -> Flavor:
    """A flavor to create with (404 when unknown or disabled); `include_disabled` to show old servers."""
    flavor = session.get(Flavor, flavor_id)
    if flavor is None or (flavor.disabled and not include_disabled):
        raise NotFound(f"Flavor {flavor_id} could not be found.", code=FLAVOR_NOT_FOUND)
    return flavor

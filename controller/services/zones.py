"""Availability zones, derived from the registered hosts: a zone exists while a host names it.

A zone is available when at least one of its hosts is enabled and has heartbeated recently; the scheduler
(`controller.scheduler`) applies the same two tests per host, so an unavailable zone cannot take a create.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from controller.models.host import Host
from controller.services.hosts import host_state


@dataclass(frozen=True)
class Zone:
    name: str
    hosts: int
    available: bool


def list_zones(session: Session, dead_after: float) -> list[Zone]:
    hosts: dict[str, int] = {}
    up: set[str] = set()
    for host in session.exec(select(Host)).all():
        hosts[host.availability_zone] = hosts.get(host.availability_zone, 0) + 1
        if host.enabled and host_state(host, dead_after) == "up":
            up.add(host.availability_zone)
    return [Zone(name, count, name in up) for name, count in sorted(hosts.items())]

"""Per-host usage counters: what the live servers placed on a host claim, kept in its row.

A server claims its flavor's vCPUs and RAM, its root disk size and one instance slot on its host from the moment
it is placed until it is DELETED or freed (a failed create whose host cleaned up). Summing that over every server
for each placement made a claim cost grow with the number of servers; instead every write that changes what a
server claims changes its host's `claimed_*` columns in the same transaction:

- placing it (`take`, a conditional UPDATE: it adds the claim only while the host still has room, so two
  controllers racing for the last room on a host cannot both get it), growing it on resize (`take` of the growth);
- everything else (deleted, freed, a resize undone) through `placed` before and `settle` after the change.

Relative updates (`claimed = claimed + delta`) commute, so concurrent writers need no other lock than the row
lock the UPDATE itself takes. `recompute` sums the servers again and writes the counters of hosts that drifted
(the reconciler calls it every pass), holding those host rows locked while it sums so no claim is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, update
from sqlmodel import Session, col, select

from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.server import Server
from controller.scheduler import SchedulerPolicy
from controller.state import DELETED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    ram_mib: int = 0
    disk_gib: int = 0
    servers: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.vcpus - other.vcpus,
            self.ram_mib - other.ram_mib,
            self.disk_gib - other.disk_gib,
            self.servers - other.servers,
        )

    def __neg__(self) -> Usage:
        return Usage() - self


@dataclass(frozen=True)
class Placed:
    """A live server's claim on its host."""

    host_id: str
    usage: Usage


def placed(session: Session, server_id: str) -> Placed | None:
    """What the server claims now, or None when it claims nothing (no host, or DELETED); its row stays locked
    on PostgreSQL until the transaction ends."""
    row = session.exec(
        select(Server.host_id, Server.status, Server.root_volume_size, Flavor.vcpus, Flavor.ram_mib)
        .join(Flavor, col(Flavor.id) == col(Server.flavor_id))
        .where(Server.id == server_id)
        .with_for_update(of=Server)  # type: ignore[arg-type]
    ).first()
    if row is None:
        return None
    host_id, status, root_gib, vcpus, ram_mib = row
    if host_id is None or status == DELETED:
        return None
    return Placed(host_id, Usage(vcpus, ram_mib, root_gib, 1))


def settle(session: Session, before: Placed | None, after: Placed | None) -> None:
    """Move the counters from what a server claimed `before` a change to what it claims `after` it (both read
    by `placed` in the transaction that makes the change)."""
    if before == after:
        return
    if before is not None and after is not None and before.host_id == after.host_id:
        add(session, before.host_id, after.usage - before.usage)
        return
    if before is not None:
        add(session, before.host_id, -before.usage)
    if after is not None:
        add(session, after.host_id, after.usage)


def add(session: Session, host_id: str, delta: Usage) -> None:
    """Change the host's counters by `delta`, unconditionally (freeing room, or an already checked change)."""
    session.exec(update(Host).where(col(Host.id) == host_id).values(**_plus(delta)))  # type: ignore[call-overload]


def take(session: Session, host_id: str, delta: Usage, policy: SchedulerPolicy) -> bool:
    """Add `delta` to the host's counters if every resource it grows still fits the host's capacity x the
    overcommit ratio; False (nothing changed) if not. The check and the change are one UPDATE, so it holds
    whatever other transactions do meanwhile."""
    guards: list[ColumnElement[bool]] = [col(Host.id) == host_id]
    for grows, claimed, capacity, ratio in (
        (delta.vcpus, Host.claimed_vcpus, Host.vcpus, policy.cpu_allocation_ratio),
        (delta.ram_mib, Host.claimed_ram_mib, Host.memory_mib, policy.ram_allocation_ratio),
        (delta.disk_gib, Host.claimed_disk_gib, Host.disk_gib, policy.disk_allocation_ratio),
    ):
        if grows > 0:
            guards.append(col(claimed) + grows <= col(capacity) * ratio)
    stmt = update(Host).where(*guards).values(**_plus(delta))
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]


def _plus(delta: Usage) -> dict[str, object]:
    return {
        "claimed_vcpus": col(Host.claimed_vcpus) + delta.vcpus,
        "claimed_ram_mib": col(Host.claimed_ram_mib) + delta.ram_mib,
        "claimed_disk_gib": col(Host.claimed_disk_gib) + delta.disk_gib,
        "claimed_servers": col(Host.claimed_servers) + delta.servers,
    }


@dataclass(frozen=True)
class Drift:
    host_id: str
    counted: Usage  # what the counters said
    actual: Usage  # what the servers claim, now written


def recompute(session: Session) -> list[Drift]:
    """Set the counters of every host whose counters differ from what its servers claim; the hosts healed.

    A first unlocked look finds the hosts that seem to drift; those rows are then locked (a no-op UPDATE: the
    row lock on PostgreSQL, the write lock on SQLite) before their servers are summed again, so a transaction
    that changed a counter has committed before the sum (and is in it), and one that has not yet changed it
    adds its delta to the value written here.
    """
    suspects = [d.host_id for d in _drifts(session, None)]
    if not suspects:
        return []
    lock = update(Host).where(col(Host.id).in_(suspects)).values(claimed_servers=col(Host.claimed_servers))
    session.exec(lock)  # type: ignore[call-overload]
    healed = _drifts(session, suspects)
    for drift in healed:
        actual = drift.actual
        session.exec(  # type: ignore[call-overload]
            update(Host)
            .where(col(Host.id) == drift.host_id)
            .values(
                claimed_vcpus=actual.vcpus,
                claimed_ram_mib=actual.ram_mib,
                claimed_disk_gib=actual.disk_gib,
                claimed_servers=actual.servers,
            )
        )
        log.warning(
            "host %s: usage counters said %s, its servers claim %s; corrected",
            drift.host_id,
            drift.counted,
            actual,
        )
    return healed


def _drifts(session: Session, host_ids: list[str] | None) -> list[Drift]:
    sums = (
        select(
            Server.host_id,
            func.coalesce(func.sum(Flavor.vcpus), 0),
            func.coalesce(func.sum(Flavor.ram_mib), 0),
            func.coalesce(func.sum(Server.root_volume_size), 0),
            func.count(col(Server.id)),
        )
        .join(Flavor, col(Flavor.id) == col(Server.flavor_id))
        .where(col(Server.host_id).is_not(None), Server.status != DELETED)
        .group_by(col(Server.host_id))
    )
    hosts = select(
        Host.id, Host.claimed_vcpus, Host.claimed_ram_mib, Host.claimed_disk_gib, Host.claimed_servers
    )
    if host_ids is not None:
        sums = sums.where(col(Server.host_id).in_(host_ids))
        hosts = hosts.where(col(Host.id).in_(host_ids))
    actual = {row[0]: Usage(*(int(v) for v in row[1:])) for row in session.exec(sums).all()}
    drifts = []
    for host_id, *counters in session.exec(hosts).all():
        counted = Usage(*counters)
        real = actual.get(host_id, Usage())
        if counted != real:
            drifts.append(Drift(host_id, counted, real))
    return drifts

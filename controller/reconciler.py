"""The reconciler: compares what the database wants with what the agents report, and repairs the drift.

One pass (`run_once`) applies these rules; the loop (`ReconcilerLoop`) repeats it every
`Settings.reconcile_seconds`.

- **Host down** (no heartbeat for `host_dead_seconds`): its settled ACTIVE/SHUTOFF servers become ERROR with fault
  `HOST_DOWN`, so servers in a dead zone are not shown ACTIVE (the server view's `host_status` says DOWN too).
- **Host up**: the agent is asked for a fresh report (`GET /v1/host`), taken *before* the rows are read, and only
  rows unchanged since then are judged by it, so an action finishing meanwhile is never undone.
  - a settled ACTIVE/SHUTOFF server the host reports `missing` (or not at all) becomes ERROR, fault
    `DOMAIN_MISSING`: its domain was undefined behind labcloud's back. Power changes of existing domains
    (a `virsh destroy`, a guest poweroff) are `services.power_sync`'s job on every heartbeat.
  - an ERROR server whose fault is one of those two recovers when the host reports its domain again: ACTIVE if it
    runs (or is paused), SHUTOFF if not, fault cleared. Other ERRORs (a failed create…) stay for the user.
  - a domain (or stored spec) that no non-deleted server owns is an orphan: logged, in the report, and deleted
    through the agent when `reconcile_orphans` is "delete". So is a volume file that no volume placed on that
    host owns (a leftover of a move or a delete cut short); a volume in a transitional status (a move, attach,
    delete… under way) or changed since the report owns its files wherever they are.
  - a VPC whose overlay view on the host differs from the controller's (a missed push, an agent restarted from
    stale specs) is pushed the current view (`services.overlay_repair`); so is a security group whose rules or
    members on the host differ from the database's (`services.sg_repair`).
  An agent that heartbeats but does not answer is skipped this round; if it stays silent it goes down.
- **Usage counters**: a host whose `claimed_*` counters differ from what its live servers claim (a write path that
  missed them, a row changed by hand) gets them recomputed (`services.host_usage.recompute`).
- **Stuck**: a server in BUILD or with a task, unchanged for `task_timeout_seconds`, that no unfinished job names,
  becomes ERROR with fault `TASK_TIMEOUT`. An unfinished job belongs to the job queue, which re-claims expired
  leases and whose failure handler lands the server, so the reconciler leaves those servers alone.

Every change is a compare-and-swap on the row as it was read: a concurrent API action or job wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import PowerState
from controller.context import ControllerContext
from controller.db import session_scope
from controller.models.common import iso_z, utcnow
from controller.models.host import Host
from controller.models.job import INIT, RUNNING, Job
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services import host_usage, overlay_repair, sg_repair
from controller.services.hosts import host_state
from controller.services.volume_state import AVAILABLE, IN_USE
from controller.services.volume_state import DELETED as VOLUME_DELETED
from controller.services.volume_state import ERROR as VOLUME_ERROR
from controller.state import ACTIVE, BUILD, DELETED, ERROR, SHUTOFF

log = logging.getLogger(__name__)

HOST_DOWN = "Ecs.0213"
DOMAIN_MISSING = "Ecs.0214"
TASK_TIMEOUT = "Ecs.0215"
RECOVERABLE = (HOST_DOWN, DOMAIN_MISSING)  # faults the reconciler set and clears again by itself

_SETTLED = (ACTIVE, SHUTOFF)
_RECOVERED: dict[str, str] = {"running": ACTIVE, "paused": ACTIVE, "shutoff": SHUTOFF, "crashed": SHUTOFF}


@dataclass(frozen=True)
class Orphan:
    host_id: str
    server_id: str
    power: PowerState


@dataclass(frozen=True, order=True)
class OrphanVolume:
    host_id: str
    volume_id: str


@dataclass
class Report:
    """What one pass saw and did; server ids per rule."""

    hosts_down: list[str] = field(default_factory=list)
    hosts_unreachable: list[str] = field(default_factory=list)
    host_down: list[str] = field(default_factory=list)  # servers now ERROR because their host is down
    missing: list[str] = field(default_factory=list)  # servers now ERROR because their domain is gone
    recovered: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    orphan_volumes: list[OrphanVolume] = field(default_factory=list)
    orphan_volumes_deleted: list[str] = field(default_factory=list)
    overlays_repaired: list[str] = field(default_factory=list)  # "<host>/<vpc>": stale views pushed again
    groups_repaired: list[str] = field(default_factory=list)  # "<host>/<group>": stale groups pushed again
    usage_healed: list[str] = field(default_factory=list)  # hosts whose usage counters were recomputed

    @property
    def changed(self) -> bool:
        return bool(
            self.host_down
            or self.missing
            or self.recovered
            or self.stuck
            or self.orphans_deleted
            or self.orphan_volumes_deleted
            or self.usage_healed
        )


class ReconcilerLoop:
    """Runs `run_once` every `interval` seconds in a daemon thread; the first pass waits one interval, so agents
    have heartbeated a restarted controller before their hosts are judged."""

    def __init__(self, ctx: ControllerContext, interval: float) -> None:
        self._ctx = ctx
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self.passes = 0  # completed passes, for tests and logs

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                run_once(self._ctx)
            except Exception:  # a failed pass (database busy, agent error) is retried at the next tick
                log.exception("reconciliation pass failed")
            self.passes += 1


def run_once(ctx: ControllerContext) -> Report:
    """One reconciliation pass over every host and every stuck server."""
    report = Report()
    with Session(ctx.engine) as session:
        hosts = list(session.exec(select(Host).order_by(col(Host.id))).all())
    for host in hosts:
        if host_state(host, ctx.settings.host_dead_seconds) == "down":
            report.hosts_down.append(host.id)
            _mark_host_down(ctx, host, report)
        else:
            _check_host(ctx, host, report)
    _fail_stuck(ctx, report)
    with session_scope(ctx.engine) as session:
        report.usage_healed = [drift.host_id for drift in host_usage.recompute(session)]
    if report.changed or report.orphans or report.orphan_volumes:
        log.info(
            "reconciled: %d host-down, %d missing, %d recovered, %d stuck, %d orphans (%d deleted), "
            "%d orphan volume files (%d deleted)",
            len(report.host_down),
            len(report.missing),
            len(report.recovered),
            len(report.stuck),
            len(report.orphans),
            len(report.orphans_deleted),
            len(report.orphan_volumes),
            len(report.orphan_volumes_deleted),
        )
    return report


# --- hosts that are down ---


def _mark_host_down(ctx: ControllerContext, host: Host, report: Report) -> None:
    reason = f"host {host.id} ({host.hostname}) is down: no heartbeat since {iso_z(host.last_heartbeat)}"
    with session_scope(ctx.engine) as session:
        ids = session.exec(
            select(Server.id).where(
                col(Server.host_id) == host.id,
                col(Server.status).in_(_SETTLED),
                col(Server.task_state).is_(None),
            )
        ).all()
        for server_id in ids:
            settled = col(Server.status).in_(_SETTLED)
            if _swap(
                session, server_id, settled, _fault(HOST_DOWN, reason), col(Server.task_state).is_(None)
            ):
                report.host_down.append(server_id)
                log.warning("server %s: %s; status ERROR until it returns", server_id, reason)


# --- hosts that are up: missing domains, recovery, orphans ---


def _check_host(ctx: ControllerContext, host: Host, report: Report) -> None:
    taken_at = utcnow()
    try:
        info = ctx.agents.for_host(host).host_info()
    except AgentClientError as exc:
        report.hosts_unreachable.append(host.id)
        log.warning("host %s heartbeats but its agent did not answer: %s; skipped this round", host.id, exc)
        return
    powers: dict[str, PowerState] = {s.id: s.power for s in info.servers}
    with session_scope(ctx.engine) as session:
        rows = session.exec(
            select(Server).where(
                col(Server.host_id) == host.id,
                col(Server.status) != DELETED,
                col(Server.task_state).is_(None),
                col(Server.updated_at) < taken_at,
            )
        ).all()
        for server in rows:
            _judge(session, host.id, server, powers.get(server.id, "missing"), taken_at, report)
        owned = set(
            session.exec(
                select(Server.id).where(
                    col(Server.id).in_(list(powers)),
                    # A server deleted after the report was taken still owned its domain when it was taken.
                    or_(col(Server.status) != DELETED, col(Server.deleted_at) >= taken_at),
                )
            ).all()
        )
        owned_volumes = _owned_volumes(session, host.id, info.volumes, taken_at)
    for server_id, power in sorted(powers.items()):
        if server_id not in owned:
            _orphan(ctx, host, Orphan(host.id, server_id, power), report)
    for volume_id in sorted(set(info.volumes) - owned_volumes):
        _orphan_volume(ctx, host, volume_id, report)
    repaired = overlay_repair.repair_host(ctx, host, info.overlays)
    report.overlays_repaired += [f"{host.id}/{vpc_id}" for vpc_id in repaired]
    repaired = sg_repair.repair_host(ctx, host, info.security_groups)
    report.groups_repaired += [f"{host.id}/{gid}" for gid in repaired]


def _judge(
    session: Session, host_id: str, server: Server, power: PowerState, taken_at: datetime, report: Report
) -> None:
    """Apply the missing-domain and recovery rules to one settled server of an up host."""
    unchanged = (col(Server.updated_at) < taken_at) & col(Server.task_state).is_(None)
    if power == "missing":
        reason = f"host {host_id} reports no domain for this server"
        was = server.status
        if was in _SETTLED:
            same = col(Server.status) == was
            if _swap(session, server.id, same, _fault(DOMAIN_MISSING, reason), unchanged):
                report.missing.append(server.id)
                log.warning("server %s was %s: %s; status ERROR", server.id, was, reason)
        elif server.status == ERROR and server.fault_code == HOST_DOWN:
            # The host is back but the domain is not: say so instead of blaming the host.
            was_down = col(Server.fault_code) == HOST_DOWN
            _swap(session, server.id, was_down, _fault(DOMAIN_MISSING, reason), unchanged)
        return
    target = _RECOVERED.get(power)
    if server.status != ERROR or server.fault_code not in RECOVERABLE or target is None:
        return
    clear = {"status": target, "fault_code": None, "fault_message": None, "fault_at": None}
    if _swap(session, server.id, col(Server.fault_code) == server.fault_code, clear, unchanged):
        report.recovered.append(server.id)
        log.info(
            "server %s: host %s reports it %s again; status ERROR → %s", server.id, host_id, power, target
        )


def _orphan(ctx: ControllerContext, host: Host, orphan: Orphan, report: Report) -> None:
    report.orphans.append(orphan)
    what = f"server {orphan.server_id} ({orphan.power})"
    agent = ctx.agents.for_host(host)
    if _apply_orphan_policy(ctx, host, what, lambda: agent.delete_server(orphan.server_id)):
        report.orphans_deleted.append(orphan.server_id)


def _owned_volumes(session: Session, host_id: str, volume_ids: list[str], taken_at: datetime) -> set[str]:
    """The reported volume files that a volume owns: placed on this host and not deleted, or busy (any
    transitional status, or changed since the report was taken: a move or delete may be under way)."""
    if not volume_ids:
        return set()
    settled = (AVAILABLE, IN_USE, VOLUME_ERROR, VOLUME_DELETED)
    return set(
        session.exec(
            select(Volume.id).where(
                col(Volume.id).in_(volume_ids),
                or_(
                    (col(Volume.host_id) == host_id) & (col(Volume.status) != VOLUME_DELETED),
                    col(Volume.status).not_in(settled),
                    col(Volume.updated_at) >= taken_at,
                    col(Volume.deleted_at) >= taken_at,
                ),
            )
        ).all()
    )


def _orphan_volume(ctx: ControllerContext, host: Host, volume_id: str, report: Report) -> None:
    report.orphan_volumes.append(OrphanVolume(host.id, volume_id))
    agent = ctx.agents.for_host(host)  # the agent refuses while a domain there attaches the volume
    if _apply_orphan_policy(ctx, host, f"volume file {volume_id}", lambda: agent.delete_volume(volume_id)):
        report.orphan_volumes_deleted.append(volume_id)


def _apply_orphan_policy(ctx: ControllerContext, host: Host, what: str, delete: Callable[[], None]) -> bool:
    """Log an orphan, and delete it through `delete` when `reconcile_orphans` says so; True if it was deleted."""
    policy = ctx.settings.reconcile_orphans
    log.warning("orphan on host %s: %s is owned by nothing in the database; policy %s", host.id, what, policy)
    if policy != "delete":
        return False
    try:
        delete()
    except AgentClientError as exc:
        log.warning("orphan %s on host %s: delete failed: %s", what, host.id, exc)
        return False
    log.info("orphan %s on host %s deleted", what, host.id)
    return True


# --- servers stuck in a task ---


def _fail_stuck(ctx: ControllerContext, report: Report) -> None:
    timeout = ctx.settings.task_timeout_seconds
    cutoff = utcnow() - timedelta(seconds=timeout)
    with session_scope(ctx.engine) as session:
        candidates = session.exec(
            select(Server).where(
                col(Server.status) != DELETED,
                or_(col(Server.task_state).is_not(None), col(Server.status) == BUILD),
                col(Server.updated_at) < cutoff,
            )
        ).all()
        if not candidates:
            return
        held = _servers_with_unfinished_jobs(session)
        for server in candidates:
            if server.id in held:
                continue
            doing = f"{server.status}/{server.task_state}" if server.task_state else server.status
            reason = f"stuck in {doing} for more than {timeout:g} s with no job working on it"
            task = (
                col(Server.task_state).is_(None)
                if server.task_state is None
                else col(Server.task_state) == server.task_state
            )
            same = (col(Server.status) == server.status) & task
            values = {**_fault(TASK_TIMEOUT, reason), "task_state": None}
            if _swap(session, server.id, same, values, col(Server.updated_at) < cutoff):
                report.stuck.append(server.id)
                log.warning("server %s: %s; status ERROR", server.id, reason)


def _servers_with_unfinished_jobs(session: Session) -> set[str]:
    payloads = session.exec(select(Job.payload).where(col(Job.status).in_((INIT, RUNNING)))).all()
    held: set[str] = set()
    for payload in payloads:
        if isinstance(payload.get("server_id"), str):
            held.add(payload["server_id"])
        held.update(s for s in payload.get("server_ids") or () if isinstance(s, str))
    return held


# --- helpers ---


def _fault(code: str, reason: str) -> dict[str, Any]:
    return {"status": ERROR, "fault_code": code, "fault_message": reason, "fault_at": utcnow()}


def _swap(session: Session, server_id: str, condition: Any, values: dict[str, Any], *more: Any) -> bool:
    """Update the server only if it still matches what was read; False when it moved meanwhile."""
    stmt = (
        update(Server)
        .where(col(Server.id) == server_id, condition, *more)
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)  # rows already loaded keep what was read
    )
    return bool(session.exec(stmt).rowcount)  # type: ignore[call-overload]

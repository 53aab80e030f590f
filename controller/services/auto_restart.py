"""Servers that ask to be restarted when their guest stops behind labcloud's back.

A server opts in with the metadata item `__labcloud_auto_restart: "true"` at create ("1", "yes" and "on" work
too; Huawei reserves `__` keys for such system settings). When a heartbeat shows its settled ACTIVE guest shut
off or crashed (a `virsh destroy`, a guest `poweroff`, a qemu crash), `services.power_sync` starts it again
instead of showing SHUTOFF: the server goes into the ordinary start transition (SHUTOFF / powering-on) and a
start job is queued, so the restart is visible in the job list and fails like any start (back to SHUTOFF with a
fault, and no retry loop). A stop through the API is never undone: it changes the server while it happens, so
the heartbeat that reports the guest off finds no settled ACTIVE row.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.jobs.queue import new_job
from controller.models.common import new_id, utcnow
from controller.models.server import Server
from controller.services.servers import BATCH_JOBS
from controller.state import ACTIVE, SHUTOFF, transition

log = logging.getLogger(__name__)

AUTO_RESTART_KEY = "__labcloud_auto_restart"
_TRUE = ("true", "1", "yes", "on")


def wants_auto_restart(meta: dict[str, str] | None) -> bool:
    return str((meta or {}).get(AUTO_RESTART_KEY, "")).strip().lower() in _TRUE


def restart_if_asked(session: Session, server_id: str, host_id: str, settled_before: datetime) -> str | None:
    """If the settled ACTIVE server on `host_id` asks for it, begin its restart; the start job's id, else None.

    One compare-and-swap moves the row from ACTIVE (no task, unchanged since `settled_before`) into the start
    task; the jobs are added in the same transaction, so either both happen or neither does.
    """
    row = session.exec(
        select(Server.project_id, Server.meta).where(
            col(Server.id) == server_id,
            col(Server.host_id) == host_id,
            col(Server.status) == ACTIVE,
            col(Server.task_state).is_(None),
            col(Server.updated_at) < settled_before,
        )
    ).first()
    if row is None or not wants_auto_restart(row[1]):
        return None
    project_id = row[0]
    t = transition("start")
    moved = session.exec(  # type: ignore[call-overload]
        update(Server)
        .where(col(Server.id) == server_id, col(Server.status) == ACTIVE, col(Server.task_state).is_(None))
        .where(col(Server.updated_at) < settled_before)
        .values(status=SHUTOFF, task_state=t.task_state, updated_at=utcnow())
    )
    if not moved.rowcount:
        return None
    parent_kind, child_kind = BATCH_JOBS["start"]
    request_id = f"auto-restart-{new_id()}"
    parent = new_job(project_id, parent_kind, request_id=request_id)
    session.add(parent)
    session.flush()
    payload = {"server_id": server_id, "action": "start", "type": "SOFT", "from_status": SHUTOFF}
    child = new_job(
        project_id,
        child_kind,
        parent_id=parent.id,
        payload=payload,
        entities={"server_id": server_id},
        request_id=request_id,
    )
    session.add(child)
    log.warning(
        "server %s stopped behind labcloud's back on host %s; %s is set, restarting it (job %s)",
        server_id,
        host_id,
        AUTO_RESTART_KEY,
        parent.id,
    )
    return parent.id

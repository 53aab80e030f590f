"""Follow power changes made inside guests (a `poweroff` in the guest, a crash) from the agents' heartbeats.

Only settled servers are touched: no task in progress and no change for `settle` (Settings.power_settle_seconds,
15 s), so a heartbeat collected before an API action cannot undo it. A guest destroyed behind labcloud's back
(`virsh destroy`: libvirt says shutoff) or crashed shows SHUTOFF within settle + one heartbeat interval, 25 s with
the defaults, or is started again if it asks for that (`services.auto_restart`).
Anything more (missing domains, down hosts, orphans, stuck tasks) is the reconciler's job (`controller.reconciler`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col

from agent.schemas import ServerState
from controller.models.common import utcnow
from controller.models.server import Server
from controller.services.auto_restart import restart_if_asked
from controller.state import ACTIVE, SHUTOFF

log = logging.getLogger(__name__)

SETTLE = timedelta(seconds=15)
_OBSERVED = {"running": ACTIVE, "shutoff": SHUTOFF, "crashed": SHUTOFF}


def apply_power_report(
    session: Session, host_id: str, reports: list[ServerState], settle: timedelta = SETTLE
) -> int:
    """Move ACTIVE↔SHUTOFF where the host saw the guest change on its own; return how many changed."""
    changed = 0
    settled_before = utcnow() - settle
    for report in reports:
        observed = _OBSERVED.get(report.power)
        if observed is None:
            continue
        expected = SHUTOFF if observed == ACTIVE else ACTIVE
        if observed == SHUTOFF and restart_if_asked(session, report.id, host_id, settled_before):
            changed += 1
            continue
        result = session.exec(  # type: ignore[call-overload]
            update(Server)
            .where(col(Server.id) == report.id, col(Server.host_id) == host_id)
            .where(col(Server.status) == expected, col(Server.task_state).is_(None))
            .where(col(Server.updated_at) < settled_before)
            .values(status=observed, updated_at=utcnow())
        )
        if result.rowcount:
            changed += 1
            log.info(
                "server %s is %s on host %s: status %s → %s",
                report.id,
                report.power,
                host_id,
                expected,
                observed,
            )
    return changed

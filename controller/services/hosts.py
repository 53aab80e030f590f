"""Hypervisor hosts as operators see them: state (up/down from heartbeats), enable and disable.

The scheduler skips disabled hosts and hosts silent for longer than `host_dead_seconds`
(`controller.scheduler`); disabling a host keeps its servers where they are.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, col, select

from controller.errors import BadRequest, NotFound
from controller.models.common import iso_z, utcnow
from controller.models.host import Host

log = logging.getLogger(__name__)

HOST_NOT_FOUND = "Ecs.0114"
REASON_MAX = 255


def host_state(host: Host, dead_after: float) -> str:
    age = (utcnow() - host.last_heartbeat).total_seconds()
    return "up" if age <= dead_after else "down"


def host_view(host: Host, dead_after: float) -> dict[str, Any]:
    return {
        "id": host.id,
        "hostname": host.hostname,
        "url": host.url,
        "accelerator": host.accelerator,
        "vcpus": host.vcpus,
        "memory_mib": host.memory_mib,
        "disk_gib": host.disk_gib,
        "availability_zone": host.availability_zone,
        "underlay_ip": host.underlay_ip,
        "external_ip": host.external_ip,
        "enabled": host.enabled,
        "disabled_reason": host.disabled_reason,
        "state": host_state(host, dead_after),
        "last_heartbeat": iso_z(host.last_heartbeat),
    }


def list_hosts(session: Session) -> list[Host]:
    return list(session.exec(select(Host).order_by(col(Host.hostname), col(Host.id))).all())


def set_enabled(session: Session, host_id: str, enabled: bool, reason: str | None = None) -> Host:
    """Enable or disable a host for new placements; a reason is kept while it is disabled."""
    if reason is not None and len(reason) > REASON_MAX:
        raise BadRequest(f"Invalid reason: at most {REASON_MAX} characters")
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"Host {host_id} could not be found.", code=HOST_NOT_FOUND)
    host.enabled = enabled
    host.disabled_reason = None if enabled else (reason or None)
    session.add(host)
    session.flush()
    log.info("host %s %s%s", host_id, "enabled" if enabled else "disabled", f": {reason}" if reason else "")
    return host

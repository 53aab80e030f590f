"""Agent-facing endpoints (bearer join token) and the health probe; the admin host API is in `admin`."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request

from agent.schemas import HostInfo
from controller.db import session_scope
from controller.errors import Unauthorized
from controller.models.common import utcnow
from controller.models.host import Host
from controller.services.power_sync import apply_power_report

router = APIRouter()


def require_join_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token = request.app.state.ctx.join_token
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
        raise Unauthorized("agents must present the join token as a Bearer token", code="Agent.0401")


@router.post("/internal/hosts", dependencies=[Depends(require_join_token)])
def register_host(info: HostInfo, request: Request) -> dict[str, str]:
    """Register an agent, or record its heartbeat; capacity and accelerator are refreshed each time."""
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        host = session.get(Host, info.host_id)
        if host is None:
            host = Host(
                id=info.host_id,
                hostname=info.hostname,
                url=info.url,
                accelerator=info.accelerator,
                vcpus=info.vcpus,
                memory_mib=info.memory_mib,
                disk_gib=info.disk_gib,
                availability_zone=info.availability_zone,
            )
        host.hostname, host.url, host.accelerator = info.hostname, info.url, info.accelerator
        host.vcpus, host.memory_mib, host.disk_gib = info.vcpus, info.memory_mib, info.disk_gib
        host.availability_zone = info.availability_zone
        host.last_heartbeat = utcnow()
        session.add(host)
        settle = timedelta(seconds=ctx.settings.power_settle_seconds)
        apply_power_report(session, info.host_id, info.servers, settle)
    return {"host_id": info.host_id}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Unauthenticated liveness probe for `labcloud up` and load balancers."""
    return {"status": "ok"}

"""Agent-facing endpoints (bearer join token) and the health probe; the admin host API is in `admin`.

Agents present either the shared bootstrap token (`<home>/join-token`, the local agent of `labcloud up`) or a
per-host join token an admin issued (`controller.services.join_tokens`), which only its own host may use (and a
host with a token of its own cannot use the shared one). With the shared token, a registered host id answers only
to its own agent (`controller.services.host_identity`); the store files also need a transfer grant
(`controller.services.transfer_grants`).
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from sqlmodel import Session

from agent.schemas import HostInfo
from controller.db import session_scope
from controller.errors import Unauthorized
from controller.models.common import utcnow
from controller.models.host import Host
from controller.services import host_identity, join_tokens
from controller.services.power_sync import apply_power_report

router = APIRouter()


def presented_token(request: Request, authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The per-host join token the agent presented, or None for the shared bootstrap token; 401 otherwise."""
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise Unauthorized("agents must present the join token as a Bearer token", code="Agent.0401")
    if hmac.compare_digest(value, request.app.state.ctx.join_token):
        return None
    if not value.startswith(join_tokens.TOKEN_PREFIX):
        raise Unauthorized("wrong join token", code="Agent.0401")
    return value


HostToken = Annotated[str | None, Depends(presented_token)]


def require_join_token(request: Request, token: HostToken) -> None:
    """For agent reads (image files): the shared token, or a per-host token already bound to its host."""
    if token is None:
        return
    with Session(request.app.state.ctx.engine) as session:
        if join_tokens.valid_token(session, token).host_id is None:
            raise Unauthorized("register with this join token first", code="Agent.0401")


@router.post("/internal/hosts")
def register_host(info: HostInfo, request: Request, token: HostToken) -> dict[str, str]:
    """Register an agent, or record its heartbeat; capacity and accelerator are refreshed each time."""
    ctx = request.app.state.ctx
    with session_scope(ctx.engine) as session:
        if token is not None:
            join_tokens.admit(session, token, info.host_id)
        else:
            join_tokens.refuse_shared_for(session, info.host_id)
        host = session.get(Host, info.host_id)
        if host is not None and token is None:
            host_identity.check_shared_claim(host, info)  # only its own agent may speak for it
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
        host.underlay_ip = info.underlay_ip
        host.external_ip = info.external_ip
        if info.agent_token:
            host.agent_token = info.agent_token
        host.last_heartbeat = utcnow()
        session.add(host)
        settle = timedelta(seconds=ctx.settings.power_settle_seconds)
        apply_power_report(session, info.host_id, info.servers, settle)
    return {"host_id": info.host_id}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Unauthenticated liveness probe for `labcloud up` and load balancers."""
    return {"status": "ok"}

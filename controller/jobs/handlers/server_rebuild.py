"""Reinstall and change-OS jobs: the host replaces the server's root disk and seed, then boots it.

The job's payload holds what the server becomes (image, key pair, user data); the row takes them only once the
host has done it. The job id is the host's rebuild id, so a call repeated after an agent restart never makes a
second new disk. A failure leaves the server ERROR with the reason: past the point where the host replaced the
disk there is no old system to go back to.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session

from agent.schemas import ServerSpec
from controller.db import session_scope
from controller.errors import ApiError
from controller.jobs.agent_calls import call_agent_patiently
from controller.jobs.handlers.servers import _fault, _land, _require
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.server import Server
from controller.services.server_rebuild import CHANGE_OS_JOB, REINSTALL_JOB
from controller.services.servers import (
    AGENT_FAILED,
    SERVER_BUSY,
    SPEC_FAILED,
    build_server_spec,
)
from controller.state import ACTIVE, transition

log = logging.getLogger(__name__)


def _rebuild_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("rebuild")
    server_id = jctx.job.payload["server_id"]
    with session_scope(jctx.engine) as session:
        _land(
            session,
            server_id,
            t.task_state,
            {"status": t.on_failure, "admin_pass": None, **_fault(code, reason)},
        )
    log.info("server %s: rebuild failed, now %s: %s", server_id, t.on_failure, reason)


def rebuild_single_server(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    t = transition("rebuild")
    server = _require(jctx)
    done = {"server_id": server.id}
    if server.task_state != t.task_state:
        if server.task_state is None and server.status == ACTIVE and server.image_id == payload["image_id"]:
            return done  # a resumed job whose work was already done
        raise JobFailed(
            SERVER_BUSY, f"server {server.id} is {server.status}/{server.task_state}, not rebuilding"
        )
    if server.host_id is None:
        raise JobFailed(AGENT_FAILED, f"server {server.id} has no host")
    host_id = server.host_id
    spec = _new_spec(jctx, server.id, payload)
    rid = request_id_var.get()
    state = call_agent_patiently(
        jctx,
        host_id,
        f"rebuilding server {server.id}",
        lambda c: c.rebuild_server(spec, jctx.job.id, request_id=rid),
    )
    assert state is not None  # a 404 is an error here
    if state.power != "running":
        raise JobFailed(AGENT_FAILED, f"after the rebuild host {host_id} reports the server {state.power}")
    values = {
        "status": t.on_success,
        "image_id": payload["image_id"],
        "key_name": payload["key_name"],
        "user_data": payload["user_data"],
        "admin_pass": None,
        "fault_code": None,
        "fault_message": None,
        "fault_at": None,
    }
    with session_scope(jctx.engine) as session:
        if not _land(session, server.id, t.task_state, values):
            raise JobFailed(SERVER_BUSY, f"server {server.id} changed while it was being rebuilt")
    log.info("server %s rebuilt from image %s, ACTIVE", server.id, payload["image_id"])
    return done


for _kind in (REINSTALL_JOB, CHANGE_OS_JOB):
    job_handler(_kind, on_fail=_rebuild_failed)(rebuild_single_server)


def _new_spec(jctx: JobContext, server_id: str, payload: dict[str, Any]) -> ServerSpec:
    """The server as it will be: the row with the payload's image, key pair and user data (not written back)."""
    with Session(jctx.engine) as session:
        server = session.get(Server, server_id)
        assert server is not None
        session.expunge(server)
        server.image_id = payload["image_id"]
        server.key_name = payload["key_name"]
        server.user_data = payload["user_data"]
        try:
            spec = build_server_spec(session, server, jctx.ctx.settings)
        except ApiError as exc:
            raise JobFailed(SPEC_FAILED, f"cannot describe server {server_id}: {exc.message}") from exc
    return spec.model_copy(update={"power": "running"})

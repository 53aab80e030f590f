"""The resize job: the host redefines the server with its new flavor (and grows the root disk), then the server
lands back in the power state it started from.

The row already carries the new flavor (see `services/server_resize.py`). A host that answers with an error has
undone its part, so a failure puts the old flavor and root size back and the server in its old status, with the
reason as its fault; a host that stays unreachable past the restart grace leaves the outcome unknown, so the
server becomes ERROR and keeps claiming the larger flavor until it is deleted.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.schemas import ServerSpec
from controller.db import session_scope
from controller.errors import ApiError
from controller.jobs.agent_calls import call_agent_patiently
from controller.jobs.handlers.servers import _fault, _land, _require
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.server import Server
from controller.services.server_resize import RESIZE_JOB
from controller.services.servers import (
    AGENT_FAILED,
    AGENT_UNREACHABLE,
    SERVER_BUSY,
    SPEC_FAILED,
    build_server_spec,
)
from controller.state import ERROR, SHUTOFF, transition

log = logging.getLogger(__name__)


def _resize_failed(jctx: JobContext, code: str, reason: str) -> None:
    payload = jctx.job.payload
    t = transition(payload["action"])
    if code == AGENT_UNREACHABLE:
        values: dict[str, Any] = {"status": ERROR, **_fault(code, reason)}
    else:
        values = {
            "status": t.on_failure or payload["from_status"],
            "flavor_id": payload["old_flavor_id"],
            "root_volume_size": payload["old_root_gib"],
            **_fault(code, reason),
        }
    with session_scope(jctx.engine) as session:
        _land(session, payload["server_id"], t.task_state, values)
    log.info("server %s: resize failed, now %s: %s", payload["server_id"], values["status"], reason)


@job_handler(RESIZE_JOB, on_fail=_resize_failed)
def resize_single_server(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    t = transition(payload["action"])
    server = _require(jctx)
    done = {"server_id": server.id}
    if server.task_state != t.task_state:
        if server.task_state is None and server.flavor_id == payload["new_flavor_id"]:
            return done  # a resumed job whose work was already done
        raise JobFailed(
            SERVER_BUSY, f"server {server.id} is {server.status}/{server.task_state}, not resizing"
        )
    if server.host_id is None:
        raise JobFailed(AGENT_FAILED, f"server {server.id} has no host")
    host_id = server.host_id
    spec = _spec(jctx, server, "shutoff" if t.on_success == SHUTOFF else "running")
    rid = request_id_var.get()
    state = call_agent_patiently(
        jctx, host_id, f"resizing server {server.id}", lambda c: c.resize_server(spec, request_id=rid)
    )
    assert state is not None  # a 404 is an error here
    if state.power != spec.power:
        raise JobFailed(AGENT_FAILED, f"after the resize host {host_id} reports the server {state.power}")
    clear = {"status": t.on_success, "fault_code": None, "fault_message": None, "fault_at": None}
    with session_scope(jctx.engine) as session:
        if not _land(session, server.id, t.task_state, clear):
            raise JobFailed(SERVER_BUSY, f"server {server.id} changed while it was being resized")
    log.info(
        "server %s resized to %s (%s GiB root), %s",
        server.id,
        payload["new_flavor_id"],
        payload["new_root_gib"],
        t.on_success,
    )
    return done


def _spec(jctx: JobContext, server: Server, power: str) -> ServerSpec:
    with jctx.session() as session:
        current = session.get(Server, server.id)
        assert current is not None
        try:
            spec = build_server_spec(session, current, jctx.ctx.settings)
        except ApiError as exc:
            raise JobFailed(SPEC_FAILED, f"cannot describe server {server.id}: {exc.message}") from exc
    return spec.model_copy(update={"power": power})

"""Server jobs: create, delete, start, stop and reboot one server each (the sub-jobs of a batch).

Every step is idempotent, so a job resumed after a controller crash converges: placement keeps an existing
claim, the agent's `PUT` of the whole spec and its `DELETE` are harmless to repeat, and the final state change
is a compare-and-swap on the task the request started. A failure lands the server in the transition table's
outcome with the reason as its fault, after undoing what the job made (agent resources, ports).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from agent.client import AgentClientError
from agent.schemas import ServerAction
from controller.db import session_scope
from controller.errors import ApiError
from controller.jobs.agent_calls import agent_errors, agent_for, call_agent_patiently
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.common import utcnow
from controller.models.server import Server
from controller.services import eips, host_usage, ipam, overlay, server_publicip, volumes
from controller.services.server_create import CREATE_ONE_JOB
from controller.services.servers import (
    AGENT_FAILED,
    BATCH_JOBS,
    DELETE_ONE_JOB,
    NO_VALID_HOST,
    SERVER_BUSY,
    SERVER_NOT_FOUND,
    SPEC_FAILED,
    build_server_spec,
    claim_host,
    push_security_groups,
)
from controller.state import ACTIVE, BUILD, DELETED, ERROR, SHUTOFF, transition

log = logging.getLogger(__name__)

_AGENT_VERB = {"start": "start", "stop": "stop", "reboot_soft": "reboot", "reboot_hard": "reboot"}


# --- create ---


def _create_failed(jctx: JobContext, code: str, reason: str) -> None:
    """Undo a failed create: the agent's resources (best effort), the ports, and the claim; then ERROR."""
    server = _load(jctx)
    if server is None or server.status != BUILD:
        if server is not None:  # e.g. deleted while being built: only the EIP reserved for it is left
            with session_scope(jctx.engine) as session:
                server_publicip.release_reserved(session, server.project_id, jctx.job.payload.get("publicip"))
        return
    freed = True
    if server.host_id:
        try:
            client = agent_for(jctx, server.host_id)
            if client is not None:
                client.delete_server(server.id, request_id=request_id_var.get())
        except AgentClientError as exc:
            # Keep the claim: the host may still hold the domain, and a later delete retries the agent.
            freed = False
            log.warning("server %s: cleaning up on host %s failed: %s", server.id, server.host_id, exc)
    values: dict[str, Any] = {"status": ERROR, "admin_pass": None, **_fault(code, reason)}
    if freed:
        values["host_id"] = None
    with session_scope(jctx.engine) as session:
        server_publicip.release_reserved(session, server.project_id, jctx.job.payload.get("publicip"))
        if freed:  # else the host may still serve the addresses (DHCP, firewall): the server keeps them
            ipam.release_ports(session, server.id)
        _land(session, server.id, transition("create").task_state, values)
    log.info("server %s: create failed, now ERROR: %s", server.id, reason)
    _push_groups(jctx, server)
    overlay.push_project_overlays(jctx.ctx, server.project_id)


@job_handler(CREATE_ONE_JOB, on_fail=_create_failed)
def create_single_server(jctx: JobContext) -> dict[str, Any]:
    server = _require(jctx)
    if server.status == ACTIVE and server.task_state is None:
        return {"server_id": server.id}  # a resumed job whose work was already done
    task = transition("create").task_state
    if server.status != BUILD or server.task_state != task:
        raise JobFailed(
            SERVER_BUSY, f"server {server.id} is {server.status}/{server.task_state}, not being built"
        )
    host_id = server.host_id
    if host_id is None:
        try:
            claim = claim_host(
                jctx.ctx, server.id, any_zone=not jctx.job.payload.get("zone_requested", False)
            )
        except ApiError as exc:
            raise JobFailed(exc.code, f"cannot place server {server.id}: {exc.message}") from exc
        if claim.no_valid_host is not None:
            raise JobFailed(NO_VALID_HOST, claim.no_valid_host.message())
        host_id = claim.host_id
    assert host_id is not None
    with jctx.session() as session:
        current = session.get(Server, server.id)
        assert current is not None
        try:
            spec = build_server_spec(session, current, jctx.ctx.settings)
        except ApiError as exc:
            raise JobFailed(SPEC_FAILED, f"cannot build server {server.id}: {exc.message}") from exc
    rid = request_id_var.get()
    state = call_agent_patiently(
        jctx, host_id, "creating the server", lambda c: c.put_server(spec, request_id=rid)
    )
    assert state is not None  # a 404 is an error here
    if state.power != "running":
        raise JobFailed(AGENT_FAILED, f"host {host_id} reports the new server {state.power}, not running")
    now = utcnow()
    publicip = jctx.job.payload.get("publicip")
    try:
        with session_scope(jctx.engine) as session:
            done = _land(session, server.id, task, {"status": ACTIVE, "launched_at": now, "admin_pass": None})
            if done and publicip:  # in the same transaction: a server that cannot have its EIP is not ACTIVE
                address = server_publicip.bind_to_server(session, server.project_id, server.id, publicip)
                log.info("server %s: EIP %s bound", server.id, address)
    except ApiError as exc:
        raise JobFailed(exc.code, f"cannot bind the EIP of server {server.id}: {exc.message}") from exc
    if not done:
        raise JobFailed(SERVER_BUSY, f"server {server.id} changed while it was being built")
    log.info("server %s ACTIVE on host %s", server.id, host_id)
    _push_groups(jctx, server)
    overlay.push_project_overlays(jctx.ctx, server.project_id)
    eips.push_external(jctx.ctx, [host_id])  # the host's router learns its VPC's shared SNAT switch
    return {"server_id": server.id}


# --- delete ---


def _delete_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("delete")
    with session_scope(jctx.engine) as session:
        _land(
            session,
            jctx.job.payload["server_id"],
            t.task_state,
            {"status": t.on_failure, **_fault(code, reason)},
        )


@job_handler(DELETE_ONE_JOB, on_fail=_delete_failed)
def delete_single_server(jctx: JobContext) -> dict[str, Any]:
    server_id = jctx.job.payload["server_id"]
    server = _load(jctx)
    if server is None or server.status == DELETED:
        return {"server_id": server_id}
    if server.host_id:
        if agent_for(jctx, server.host_id) is None:
            log.warning(
                "server %s: host %s is no longer registered; nothing to delete there",
                server_id,
                server.host_id,
            )
        else:
            rid = request_id_var.get()
            call_agent_patiently(
                jctx,
                server.host_id,
                "deleting the server",
                lambda c: c.delete_server(server_id, request_id=rid),
                missing_ok=True,
            )
    delete_volumes = bool(jctx.job.payload.get("delete_volume"))
    if delete_volumes:
        _delete_volume_files(jctx, server_id)
    now = utcnow()
    with session_scope(jctx.engine) as session:
        eips.release_for_server(session, server_id, delete=bool(jctx.job.payload.get("delete_publicip")))
        ipam.release_ports(session, server_id)
        if delete_volumes:
            volumes.delete_server_volumes(session, server_id)
        volumes.release_server_volumes(session, server_id)
        values = {"status": DELETED, "deleted_at": now, "admin_pass": None}
        _land(session, server_id, transition("delete").task_state, values)
    log.info("server %s DELETED", server_id)
    _push_groups(jctx, server)
    overlay.push_project_overlays(jctx.ctx, server.project_id)
    eips.push_external(jctx.ctx, [server.host_id])
    return {"server_id": server_id}


def _delete_volume_files(jctx: JobContext, server_id: str) -> None:
    """Remove the files of the server's data volumes from their hosts (after the domain that held them).

    A file already gone is fine, so a resumed job converges; a host no longer registered has nothing to remove.
    """
    with jctx.session() as session:
        placed = [(v.id, v.host_id) for v in volumes.attached_volumes(session, server_id) if v.host_id]
    for volume_id, host_id in placed:
        client = agent_for(jctx, host_id)
        if client is None:
            log.warning("volume %s: host %s is gone; nothing to delete there", volume_id, host_id)
            continue
        with agent_errors(host_id, f"deleting volume {volume_id}", missing_ok=True):
            client.delete_volume(volume_id, request_id=request_id_var.get())


# --- start, stop, reboot ---


def _action_failed(jctx: JobContext, code: str, reason: str) -> None:
    payload = jctx.job.payload
    t = transition(payload["action"])
    back = t.on_failure or payload["from_status"]
    with session_scope(jctx.engine) as session:
        _land(session, payload["server_id"], t.task_state, {"status": back, **_fault(code, reason)})


def run_action(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    t = transition(payload["action"])
    server = _require(jctx)
    if server.task_state != t.task_state:
        if server.task_state is None and server.status == t.on_success:
            return {"server_id": server.id}  # a resumed job whose work was already done
        raise JobFailed(
            SERVER_BUSY, f"server {server.id} is {server.status}/{server.task_state}, not {t.task_state}"
        )
    if server.host_id is None or agent_for(jctx, server.host_id) is None:
        raise JobFailed(AGENT_FAILED, f"server {server.id} has no host to run it")
    action = ServerAction(action=_AGENT_VERB[payload["action"]], type=payload.get("type", "SOFT"))  # type: ignore[arg-type]
    rid = request_id_var.get()
    state = call_agent_patiently(
        jctx,
        server.host_id,
        f"{action.type.lower()} {action.action}",
        lambda c: c.server_action(server.id, action, request_id=rid),
    )
    assert state is not None
    expected = "shutoff" if t.on_success == SHUTOFF else "running"
    if state.power != expected:
        raise JobFailed(
            AGENT_FAILED, f"after {action.action} the host reports the server {state.power}, not {expected}"
        )
    clear = {"status": t.on_success, "fault_code": None, "fault_message": None, "fault_at": None}
    with session_scope(jctx.engine) as session:
        _land(session, server.id, t.task_state, clear)
    log.info("server %s %s", server.id, t.on_success)
    return {"server_id": server.id}


for _parent, _child in BATCH_JOBS.values():
    job_handler(_child, on_fail=_action_failed)(run_action)


# --- helpers ---


def _load(jctx: JobContext) -> Server | None:
    with jctx.session() as session:
        return session.get(Server, jctx.job.payload["server_id"])


def _require(jctx: JobContext) -> Server:
    server = _load(jctx)
    if server is None or server.status == DELETED:
        server_id = jctx.job.payload["server_id"]
        raise JobFailed(SERVER_NOT_FOUND, f"Instance[{server_id}] could not be found.")
    return server


def _fault(code: str, reason: str) -> dict[str, Any]:
    return {"fault_code": code, "fault_message": reason, "fault_at": utcnow()}


def _land(session: Session, server_id: str, task: str, values: dict[str, Any]) -> bool:
    """End the server's task `task` with `values`; False when the server is no longer in that task.

    What the server claims on its host (`services.host_usage`) follows in the same transaction: a delete or a
    freed failed create gives it back, a resize undone returns the difference. While the task is on, only this
    job writes the row, so the claim read before the change is the one the change replaces."""
    before = host_usage.placed(session, server_id)
    stmt = (
        update(Server)
        .where(col(Server.id) == server_id, col(Server.task_state) == task)
        .values(task_state=None, updated_at=utcnow(), **values)
    )
    if not session.exec(stmt).rowcount:
        return False
    host_usage.settle(session, before, host_usage.placed(session, server_id))
    return True


def _push_groups(jctx: JobContext, server: Server) -> None:
    try:
        push_security_groups(jctx.ctx, server.security_group_ids, members_only=True)
    except Exception:  # the server's own state is settled; the reconciler repairs a missed push
        log.exception("server %s: pushing its security groups failed", server.id)

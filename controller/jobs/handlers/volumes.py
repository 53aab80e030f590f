"""Volume jobs: create, delete, attach, detach and extend one volume each.

Steps are idempotent so a resumed job converges: the agent's `PUT` of a volume keeps an existing file, attach
and detach are no-ops when already done, and the final state change is a compare-and-swap on the transitional
status the request set. A failure lands the volume in the transition table's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlmodel import col

from agent.client import AgentClientError
from agent.schemas import VolumeAttachment, VolumeSpec
from controller.db import session_scope
from controller.errors import ApiError
from controller.jobs.agent_calls import agent_errors, agent_for, call_agent_patiently
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.common import utcnow
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services import volume_moves
from controller.services.servers import AGENT_UNREACHABLE, SERVER_NOT_FOUND
from controller.services.volume_sources import volume_spec
from controller.services.volume_state import AVAILABLE, DELETED, IN_USE, transition
from controller.services.volumes import (
    ATTACH_JOB,
    CREATE_JOB,
    DELETE_JOB,
    DETACH_JOB,
    EXTEND_JOB,
    VOLUME_BUSY,
    VOLUME_NOT_FOUND,
    land,
)
from controller.state import DELETED as SERVER_DELETED

log = logging.getLogger(__name__)

_DETACHED: dict[str, Any] = {"server_id": None, "device": None, "attached_at": None}


# --- create: nothing to do on a host yet (volumes reach a host at their first attach), except for a volume
# made from a snapshot, which is made from it on the snapshot's host at once ---


def _create_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("create")
    with session_scope(jctx.engine) as session:
        for volume_id in jctx.job.payload["volume_ids"]:
            land(session, volume_id, t.during, {"status": t.on_failure})


@job_handler(CREATE_JOB, on_fail=_create_failed)
def create_volumes(jctx: JobContext) -> dict[str, Any]:
    ids: list[str] = jctx.job.payload["volume_ids"]
    for volume_id in ids:
        volume = _volume(jctx, volume_id)
        if volume.host_id is None or volume.status != transition("create").during:
            continue
        client = agent_for(jctx, volume.host_id)
        if client is None:
            raise JobFailed(AGENT_UNREACHABLE, f"host {volume.host_id} is no longer registered")
        with agent_errors(volume.host_id, f"creating volume {volume.id} from {volume.source_kind}"):
            client.put_volume(agent_spec(jctx, volume), request_id=request_id_var.get())
    with session_scope(jctx.engine) as session:
        for volume_id in ids:
            land(session, volume_id, transition("create").during, {"status": AVAILABLE})
    log.info("volumes %s available", ids)
    return {"volume_id": ids[0]}


# --- delete ---


def _delete_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("delete")
    with session_scope(jctx.engine) as session:
        land(session, jctx.job.payload["volume_id"], t.during, {"status": t.on_failure})


@job_handler(DELETE_JOB, on_fail=_delete_failed)
def delete_volume(jctx: JobContext) -> dict[str, Any]:
    volume = _volume(jctx)
    if volume.status == DELETED:
        return {"volume_id": volume.id}
    if volume.host_id:
        client = agent_for(jctx, volume.host_id)
        if client is None:
            log.warning("volume %s: host %s is gone; nothing to delete there", volume.id, volume.host_id)
        else:
            with agent_errors(volume.host_id, f"deleting volume {volume.id}", missing_ok=True):
                client.delete_volume(volume.id, request_id=request_id_var.get())
    with session_scope(jctx.engine) as session:
        values = {"status": DELETED, "deleted_at": utcnow(), **_DETACHED}
        if not land(session, volume.id, transition("delete").during, values):
            raise JobFailed(VOLUME_BUSY, f"volume {volume.id} changed while it was being deleted")
    log.info("volume %s deleted", volume.id)
    return {"volume_id": volume.id}


# --- attach ---


def _attach_failed(jctx: JobContext, code: str, reason: str) -> None:
    """Back to available; unplug it from the host in case the agent got that far (best effort). A move that did
    not finish leaves the volume on its source host, without the export or a copy on the target."""
    payload = jctx.job.payload
    server = _server_or_none(jctx, payload["server_id"])
    if payload.get("move_from") and server is not None and server.host_id:
        volume_moves.undo_move(jctx, payload["volume_id"], payload["move_from"], server.host_id)
    if server is not None and server.host_id:
        try:
            client = agent_for(jctx, server.host_id)
            if client is not None:
                client.detach_volume(server.id, payload["volume_id"], request_id=request_id_var.get())
        except AgentClientError as exc:
            log.warning(
                "volume %s: undoing attach on %s failed: %s", payload["volume_id"], server.host_id, exc
            )
    with session_scope(jctx.engine) as session:
        land(session, payload["volume_id"], transition("attach").during, {"status": AVAILABLE, **_DETACHED})
    log.info("volume %s: attach failed, available again: %s", payload["volume_id"], reason)


@job_handler(ATTACH_JOB, on_fail=_attach_failed)
def attach_volume(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    volume = _volume(jctx)
    server_id, device = payload["server_id"], payload["device"]
    done = {"server_id": server_id, "volume_id": volume.id}
    if volume.status == IN_USE and volume.server_id == server_id:
        return done  # a resumed job whose work was already done
    if volume.status != transition("attach").during or volume.server_id != server_id:
        raise JobFailed(
            VOLUME_BUSY, f"volume {volume.id} is {volume.status}, not being attached to {server_id}"
        )
    server = _server_or_none(jctx, server_id)
    if server is None or server.host_id is None:
        raise JobFailed(SERVER_NOT_FOUND, f"Instance[{server_id}] could not be found or has no host.")
    host_id = server.host_id
    move_from = payload.get("move_from")
    if move_from and move_from != host_id:
        volume_moves.move_volume(jctx, volume, move_from, host_id)
    # Record where the file will live before making it, so a crash after the agent call cannot lose it.
    with session_scope(jctx.engine) as session:
        placed = session.exec(
            update(Volume)
            .where(col(Volume.id) == volume.id)
            .where((col(Volume.host_id).is_(None)) | (col(Volume.host_id) == host_id))
            .values(host_id=host_id)
        ).rowcount  # type: ignore[attr-defined]
    if not placed:
        raise JobFailed(VOLUME_BUSY, f"volume {volume.id} is stored on host {volume.host_id}, not {host_id}")
    rid = request_id_var.get()
    attachment = VolumeAttachment(
        volume_id=volume.id, device=device.rsplit("/", 1)[-1], serial=volume.id[:20]
    )
    # Both calls are idempotent, so an agent restarted in the middle of either redoes it (no second file, no
    # second disk) instead of leaving its spec and the volume's status apart.
    spec = agent_spec(jctx, volume)
    call_agent_patiently(
        jctx, host_id, f"creating volume {volume.id}", lambda c: c.put_volume(spec, request_id=rid)
    )
    call_agent_patiently(
        jctx,
        host_id,
        f"attaching volume {volume.id} to server {server_id}",
        lambda c: c.attach_volume(server_id, attachment, request_id=rid),
    )
    with session_scope(jctx.engine) as session:
        if not land(
            session, volume.id, transition("attach").during, {"status": IN_USE, "attached_at": utcnow()}
        ):
            raise JobFailed(VOLUME_BUSY, f"volume {volume.id} changed while it was being attached")
    log.info("volume %s attached to server %s as %s", volume.id, server_id, device)
    return done


# --- detach ---


def _detach_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("detach")
    with session_scope(jctx.engine) as session:
        land(session, jctx.job.payload["volume_id"], t.during, {"status": t.on_failure})


@job_handler(DETACH_JOB, on_fail=_detach_failed)
def detach_volume(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    volume = _volume(jctx)
    server_id = payload["server_id"]
    done = {"server_id": server_id, "volume_id": volume.id}
    if volume.status == AVAILABLE and volume.server_id is None:
        return done  # a resumed job whose work was already done
    if volume.status != transition("detach").during:
        raise JobFailed(VOLUME_BUSY, f"volume {volume.id} is {volume.status}, not being detached")
    server = _server_or_none(jctx, server_id)
    if server is not None and server.host_id:
        client = agent_for(jctx, server.host_id)
        if client is None:
            raise JobFailed(AGENT_UNREACHABLE, f"host {server.host_id} is no longer registered")
        with agent_errors(
            server.host_id, f"detaching volume {volume.id} from server {server_id}", missing_ok=True
        ):
            client.detach_volume(server_id, volume.id, request_id=request_id_var.get())
    with session_scope(jctx.engine) as session:
        if not land(session, volume.id, transition("detach").during, {"status": AVAILABLE, **_DETACHED}):
            raise JobFailed(VOLUME_BUSY, f"volume {volume.id} changed while it was being detached")
    log.info("volume %s detached from server %s", volume.id, server_id)
    return done


# --- extend ---


def _extend_failed(jctx: JobContext, code: str, reason: str) -> None:
    """Back to where it started, at the size it had: a file that did grow is only larger, never harmed."""
    payload = jctx.job.payload
    with session_scope(jctx.engine) as session:
        land(session, payload["volume_id"], transition("extend").during, {"status": payload["back_to"]})
    log.info("volume %s: extend failed, %s again: %s", payload["volume_id"], payload["back_to"], reason)


@job_handler(EXTEND_JOB, on_fail=_extend_failed)
def extend_volume(jctx: JobContext) -> dict[str, Any]:
    """Grow the file on its host (online when a running guest holds it); a volume on no host is a row only."""
    payload = jctx.job.payload
    volume = _volume(jctx)
    new_size: int = payload["new_size"]
    done = {"volume_id": volume.id, "size": new_size}
    if volume.status == payload["back_to"] and volume.size == new_size:
        return done  # a resumed job whose work was already done
    if volume.status != transition("extend").during:
        raise JobFailed(VOLUME_BUSY, f"volume {volume.id} is {volume.status}, not being extended")
    if volume.host_id:
        client = agent_for(jctx, volume.host_id)
        if client is None:
            raise JobFailed(AGENT_UNREACHABLE, f"host {volume.host_id} is no longer registered")
        with agent_errors(volume.host_id, f"extending volume {volume.id} to {new_size} GiB"):
            client.put_volume(agent_spec(jctx, volume, new_size), request_id=request_id_var.get())
    with session_scope(jctx.engine) as session:
        values = {"status": payload["back_to"], "size": new_size}
        if not land(session, volume.id, transition("extend").during, values):
            raise JobFailed(VOLUME_BUSY, f"volume {volume.id} changed while it was being extended")
    log.info("volume %s extended to %s GiB", volume.id, new_size)
    return done


# --- helpers ---


def agent_spec(jctx: JobContext, volume: Volume, size_gib: int | None = None) -> VolumeSpec:
    """The volume as the agent should make it, with its source; a source gone meanwhile fails the job."""
    try:
        with jctx.session() as session:
            return volume_spec(session, jctx.ctx.settings, volume, size_gib)
    except ApiError as exc:
        raise JobFailed(exc.code, f"volume {volume.id}: its source is unusable: {exc.message}") from exc


def _volume(jctx: JobContext, volume_id: str | None = None) -> Volume:
    volume_id = volume_id or jctx.job.payload["volume_id"]
    with jctx.session() as session:
        volume = session.get(Volume, volume_id)
    if volume is None:
        raise JobFailed(VOLUME_NOT_FOUND, f"Volume[{volume_id}] could not be found.")
    return volume


def _server_or_none(jctx: JobContext, server_id: str) -> Server | None:
    with jctx.session() as session:
        server = session.get(Server, server_id)
    return None if server is None or server.status == SERVER_DELETED else server

"""Snapshot jobs: take a snapshot, delete one, roll one back onto its volume.

Steps are idempotent so a resumed job converges: the agent's `PUT` of a snapshot keeps a copy it already made,
delete of a missing file is fine, and a rollback simply runs again (the volume is detached and marked
`rollbacking` meanwhile). A snapshot without a host (its volume had no file yet) involves no agent at all.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.schemas import SnapshotSpec, VolumeRollback, VolumeSource
from controller.db import session_scope
from controller.errors import ApiError
from controller.jobs.agent_calls import agent_errors, agent_for
from controller.jobs.handlers.volumes import agent_spec
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.common import utcnow
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume
from controller.services.servers import AGENT_UNREACHABLE
from controller.services.snapshot_state import AVAILABLE, DELETED, transition
from controller.services.snapshots import CREATE_JOB, DELETE_JOB, ROLLBACK_JOB, SNAPSHOT_BUSY, land
from controller.services.volume_sources import SNAPSHOT_NOT_FOUND, agent_source
from controller.services.volume_state import AVAILABLE as VOLUME_AVAILABLE
from controller.services.volume_state import transition as volume_transition
from controller.services.volumes import VOLUME_NOT_FOUND
from controller.services.volumes import land as land_volume

log = logging.getLogger(__name__)


# --- create ---


def _create_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("create")
    with session_scope(jctx.engine) as session:
        land(session, jctx.job.payload["snapshot_id"], t.during, {"status": t.on_failure})
    log.info("snapshot %s failed: %s", jctx.job.payload["snapshot_id"], reason)


@job_handler(CREATE_JOB, on_fail=_create_failed)
def create_snapshot(jctx: JobContext) -> dict[str, Any]:
    snapshot = _snapshot(jctx)
    done = {"snapshot_id": snapshot.id, "volume_id": snapshot.volume_id}
    if snapshot.status == AVAILABLE:
        return done  # a resumed job whose work was already done
    if snapshot.status != transition("create").during:
        raise JobFailed(SNAPSHOT_BUSY, f"snapshot {snapshot.id} is {snapshot.status}, not being created")
    if snapshot.host_id is not None:
        volume = _volume(jctx, snapshot.volume_id)
        client = agent_for(jctx, snapshot.host_id)
        if client is None:
            raise JobFailed(AGENT_UNREACHABLE, f"host {snapshot.host_id} is no longer registered")
        rid = request_id_var.get()
        with agent_errors(snapshot.host_id, f"making sure volume {volume.id} exists"):
            client.put_volume(agent_spec(jctx, volume), request_id=rid)
        with agent_errors(snapshot.host_id, f"copying volume {volume.id} to snapshot {snapshot.id}"):
            client.put_snapshot(SnapshotSpec(id=snapshot.id, volume_id=volume.id), request_id=rid)
    with session_scope(jctx.engine) as session:
        if not land(session, snapshot.id, transition("create").during, {"status": AVAILABLE}):
            raise JobFailed(SNAPSHOT_BUSY, f"snapshot {snapshot.id} changed while it was being created")
    log.info("snapshot %s of volume %s available", snapshot.id, snapshot.volume_id)
    return done


# --- delete ---


def _delete_failed(jctx: JobContext, code: str, reason: str) -> None:
    t = transition("delete")
    with session_scope(jctx.engine) as session:
        land(session, jctx.job.payload["snapshot_id"], t.during, {"status": t.on_failure})


@job_handler(DELETE_JOB, on_fail=_delete_failed)
def delete_snapshot(jctx: JobContext) -> dict[str, Any]:
    snapshot = _snapshot(jctx)
    done = {"snapshot_id": snapshot.id}
    if snapshot.status == DELETED:
        return done
    if snapshot.host_id is not None:
        client = agent_for(jctx, snapshot.host_id)
        if client is None:
            log.warning(
                "snapshot %s: host %s is gone; nothing to delete there", snapshot.id, snapshot.host_id
            )
        else:
            with agent_errors(snapshot.host_id, f"deleting snapshot {snapshot.id}", missing_ok=True):
                client.delete_snapshot(snapshot.id, request_id=request_id_var.get())
    with session_scope(jctx.engine) as session:
        values = {"status": DELETED, "deleted_at": utcnow()}
        if not land(session, snapshot.id, transition("delete").during, values):
            raise JobFailed(SNAPSHOT_BUSY, f"snapshot {snapshot.id} changed while it was being deleted")
    log.info("snapshot %s deleted", snapshot.id)
    return done


# --- rollback ---


def _rollback_failed(jctx: JobContext, code: str, reason: str) -> None:
    """The snapshot is unharmed; the volume's data is in doubt, so it shows error_rollbacking (a new rollback
    or a delete is allowed from there)."""
    payload = jctx.job.payload
    with session_scope(jctx.engine) as session:
        t = transition("rollback")
        land(session, payload["snapshot_id"], t.during, {"status": t.on_failure})
        vt = volume_transition("rollback")
        land_volume(session, payload["volume_id"], vt.during, {"status": vt.on_failure})
    log.info(
        "rollback of volume %s to snapshot %s failed: %s",
        payload["volume_id"],
        payload["snapshot_id"],
        reason,
    )


@job_handler(ROLLBACK_JOB, on_fail=_rollback_failed)
def rollback_snapshot(jctx: JobContext) -> dict[str, Any]:
    snapshot = _snapshot(jctx)
    volume = _volume(jctx, jctx.job.payload["volume_id"])
    done = {"snapshot_id": snapshot.id, "volume_id": volume.id}
    if snapshot.status == AVAILABLE and volume.status == VOLUME_AVAILABLE:
        return done  # a resumed job whose work was already done
    if volume.status != volume_transition("rollback").during:
        raise JobFailed(SNAPSHOT_BUSY, f"volume {volume.id} is {volume.status}, not being rolled back")
    if volume.host_id is not None:
        _rollback_on_host(jctx, snapshot, volume, volume.host_id)
    with session_scope(jctx.engine) as session:
        if not land_volume(
            session, volume.id, volume_transition("rollback").during, {"status": VOLUME_AVAILABLE}
        ):
            raise JobFailed(SNAPSHOT_BUSY, f"volume {volume.id} changed while it was being rolled back")
        land(session, snapshot.id, transition("rollback").during, {"status": AVAILABLE})
    log.info("volume %s rolled back to snapshot %s", volume.id, snapshot.id)
    return done


def _rollback_on_host(jctx: JobContext, snapshot: Snapshot, volume: Volume, host_id: str) -> None:
    """Replace the volume's file with the snapshot's data: its file on this host (the volume never moves), or,
    for a snapshot taken before the volume had a file, what the volume was first made from."""
    if snapshot.host_id is not None:
        source: VolumeSource | None = VolumeSource(kind="snapshot", id=snapshot.id)
    else:
        try:
            with jctx.session() as session:
                source = agent_source(session, jctx.ctx.settings, snapshot.source_kind, snapshot.source_id)
        except ApiError as exc:
            raise JobFailed(
                exc.code, f"snapshot {snapshot.id}: its source is unusable: {exc.message}"
            ) from exc
    client = agent_for(jctx, host_id)
    if client is None:
        raise JobFailed(AGENT_UNREACHABLE, f"host {host_id} is no longer registered")
    rid = request_id_var.get()
    with agent_errors(host_id, f"making sure volume {volume.id} exists"):
        client.put_volume(agent_spec(jctx, volume), request_id=rid)
    with agent_errors(host_id, f"rolling volume {volume.id} back to snapshot {snapshot.id}"):
        client.rollback_volume(volume.id, VolumeRollback(source=source), request_id=rid)


# --- helpers ---


def _snapshot(jctx: JobContext) -> Snapshot:
    snapshot_id = jctx.job.payload["snapshot_id"]
    with jctx.session() as session:
        snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None:
        raise JobFailed(SNAPSHOT_NOT_FOUND, f"Snapshot[{snapshot_id}] could not be found.")
    return snapshot


def _volume(jctx: JobContext, volume_id: str) -> Volume:
    with jctx.session() as session:
        volume = session.get(Volume, volume_id)
    if volume is None:
        raise JobFailed(VOLUME_NOT_FOUND, f"Volume[{volume_id}] could not be found.")
    return volume

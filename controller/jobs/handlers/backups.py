"""CBR jobs: a checkpoint (back up its resources), a restore, a delete.

Steps are idempotent so a resumed job converges: the agent keeps copies it already staged, a disk whose data
is in the store (`store_key` set) is not uploaded again, and discarding or deleting twice is harmless. Progress
goes into the operation-log row of each backup as the steps finish. A failure lands the backup in `error` with
a reason (its staged copies and stored data removed), the checkpoint in `error`, a restored volume in `error`
and a restored server in ERROR with a fault.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from agent.client import AgentClientError
from agent.schemas import BackupDisk, BackupFile, BackupTake, DiskRestore, ServerAction, ServerRestore
from controller.db import session_scope
from controller.jobs.agent_calls import agent_for, call_agent_patiently
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.backup import VOLUME_TYPE, Backup, Checkpoint, OperationLog
from controller.models.common import utcnow
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services import transfer_grants
from controller.services.backup_sources import backup_file
from controller.services.backup_store import open_store
from controller.services.backups import (
    AVAILABLE,
    BACKUP_FAILED,
    CHECKPOINT_JOB,
    DELETE_JOB,
    DELETED,
    ERROR,
    FAILED,
    PROTECTING,
    RESTORE_JOB,
    RUNNING,
    SUCCESS,
    children,
)
from controller.services.volume_state import RESTORING_BACKUP
from controller.state import ACTIVE, SHUTOFF
from controller.state import ERROR as SERVER_ERROR

log = logging.getLogger(__name__)

RESTORE_TASK = "restoring"


# --- operation logs ---


def _op(session: Session, op_id: str, **values: Any) -> None:
    values.setdefault("updated_at", utcnow())
    session.exec(update(OperationLog).where(col(OperationLog.id) == op_id).values(**values))


def _progress(jctx: JobContext, op_id: str, progress: int) -> None:
    with session_scope(jctx.engine) as session:
        _op(session, op_id, status=RUNNING, progress=progress)


def _op_for(session: Session, backup_id: str, operation: str) -> OperationLog:
    op = session.exec(
        select(OperationLog)
        .where(OperationLog.backup_id == backup_id, OperationLog.operation_type == operation)
        .order_by(col(OperationLog.created_at).desc())
    ).first()
    assert op is not None, f"no {operation} task for backup {backup_id}"
    return op


def _set_backup(session: Session, backup_id: str, **values: Any) -> None:
    values.setdefault("updated_at", utcnow())
    session.exec(
        update(Backup)
        .where((col(Backup.id) == backup_id) | (col(Backup.parent_id) == backup_id))
        .values(**values)
    )


# --- checkpoint: back up every resource ---


def _checkpoint_failed(jctx: JobContext, code: str, reason: str) -> None:
    with session_scope(jctx.engine) as session:
        tops = session.exec(
            select(Backup).where(
                Backup.checkpoint_id == jctx.job.payload["checkpoint_id"],
                col(Backup.parent_id).is_(None),
                Backup.status == PROTECTING,
            )
        ).all()
    for top in tops:
        _backup_failed(jctx, top, code, reason)
    _land_checkpoint(jctx, ERROR)


@job_handler(CHECKPOINT_JOB, on_fail=_checkpoint_failed)
def run_checkpoint(jctx: JobContext) -> dict[str, Any]:
    checkpoint_id = jctx.job.payload["checkpoint_id"]
    with session_scope(jctx.engine) as session:
        tops = list(
            session.exec(
                select(Backup)
                .where(Backup.checkpoint_id == checkpoint_id, col(Backup.parent_id).is_(None))
                .order_by(col(Backup.created_at), col(Backup.id))
            ).all()
        )
    failed = False
    for top in tops:
        if top.status != PROTECTING:
            failed = failed or top.status == ERROR
            continue
        try:
            _protect(jctx, top)
        except JobFailed as exc:
            _backup_failed(jctx, top, exc.code, exc.reason)
            failed = True
    _land_checkpoint(jctx, ERROR if failed else AVAILABLE)
    return {"checkpoint_id": checkpoint_id, "backup_ids": [t.id for t in tops]}


def _land_checkpoint(jctx: JobContext, status: str) -> None:
    with session_scope(jctx.engine) as session:
        session.exec(
            update(Checkpoint)
            .where(col(Checkpoint.id) == jctx.job.payload["checkpoint_id"])
            .values(status=status, updated_at=utcnow())
        )


def _protect(jctx: JobContext, top: Backup) -> None:
    """Stage, upload and discard the copies of one backup's disks (the top row itself for a volume)."""
    with session_scope(jctx.engine) as session:
        op_id = _op_for(session, top.id, "backup").id
        _op(session, op_id, status=RUNNING, started_at=utcnow())
        disks = children(session, top.id) or [top]
        host_id = top.host_id
        if top.resource_type == VOLUME_TYPE:
            volume = session.get(Volume, top.resource_id)
            host_id = volume.host_id if volume is not None else None  # it may have reached a host since
    if host_id is None:
        log.info("backup %s: volume %s was never written; an empty backup", top.id, top.resource_id)
    else:
        request = BackupTake(
            server_id=None if top.resource_type == VOLUME_TYPE else top.resource_id,
            disks=[BackupDisk(backup_id=d.id, volume_id=d.volume_id) for d in disks],
        )
        rid = request_id_var.get()
        what = f"backing up {top.resource_id}"
        call_agent_patiently(jctx, host_id, what, lambda c: c.take_backups(request, request_id=rid))
        _progress(jctx, op_id, 30)
        for n, disk in enumerate(disks, 1):
            if disk.store_key is None:
                put_url = transfer_grants.signed_url(jctx.ctx.settings, "backup", disk.id, "PUT")
                _upload(jctx, host_id, disk, put_url)
            _progress(jctx, op_id, 30 + 65 * n // len(disks))
        for disk in disks:
            call_agent_patiently(
                jctx,
                host_id,
                "discarding staged copy",
                lambda c, d=disk: c.discard_backup(d.id),
                missing_ok=True,
            )
    with session_scope(jctx.engine) as session:
        _set_backup(session, top.id, status=AVAILABLE, host_id=host_id)
        total = sum(
            d.size_bytes for d in session.exec(select(Backup).where(Backup.parent_id == top.id)).all()
        )
        if total:
            session.exec(update(Backup).where(col(Backup.id) == top.id).values(size_bytes=total))
        _op(session, op_id, status=SUCCESS, progress=100, ended_at=utcnow())
    log.info("backup %s of %s %s available", top.id, top.resource_type, top.resource_id)


def _upload(jctx: JobContext, host_id: str, disk: Backup, url: str) -> None:
    rid = request_id_var.get()
    uploaded = call_agent_patiently(
        jctx,
        host_id,
        f"uploading disk backup {disk.id}",
        lambda c: c.upload_backup(disk.id, url, request_id=rid),
    )
    assert uploaded is not None
    key = f"{disk.id}.qcow2"
    size = open_store(jctx.ctx.settings).stat(key)
    if size != uploaded.size:
        raise JobFailed(
            BACKUP_FAILED, f"disk backup {disk.id}: the store holds {size} bytes, {uploaded.size} sent"
        )
    with session_scope(jctx.engine) as session:
        session.exec(
            update(Backup)
            .where(col(Backup.id) == disk.id)
            .values(store_key=key, checksum=uploaded.checksum, size_bytes=uploaded.size, updated_at=utcnow())
        )


def _backup_failed(jctx: JobContext, top: Backup, code: str, reason: str) -> None:
    """`error` with the reason; staged copies and stored data removed (best effort)."""
    with session_scope(jctx.engine) as session:
        disks = children(session, top.id) or [session.get(Backup, top.id) or top]
        _set_backup(session, top.id, status=ERROR, fail_reason=reason, store_key=None)
        op = _op_for(session, top.id, "backup")
        _op(session, op.id, status=FAILED, ended_at=utcnow(), error_code=code, error_message=reason)
    store = open_store(jctx.ctx.settings)
    client = agent_for(jctx, top.host_id) if top.host_id else None
    for disk in disks:
        store.delete(f"{disk.id}.qcow2")
        if client is not None:
            try:
                client.discard_backup(disk.id)
            except AgentClientError as exc:
                log.warning(
                    "backup %s: discarding the staged copy on %s failed: %s", disk.id, top.host_id, exc
                )
    log.warning("backup %s of %s failed: %s", top.id, top.resource_id, reason)


# --- restore ---


def _file(jctx: JobContext, disk: Backup) -> BackupFile:
    return backup_file(jctx.ctx.settings, disk)


def _restore_failed(jctx: JobContext, code: str, reason: str) -> None:
    payload = jctx.job.payload
    with session_scope(jctx.engine) as session:
        _set_backup(session, payload["backup_id"], status=AVAILABLE)
        _op(
            session, payload["op_id"], status=FAILED, ended_at=utcnow(), error_code=code, error_message=reason
        )
        if "volume_id" in payload:
            session.exec(
                update(Volume)
                .where(col(Volume.id) == payload["volume_id"], col(Volume.status) == RESTORING_BACKUP)
                .values(status="error", updated_at=utcnow())
            )
        else:
            fault = {"fault_code": code, "fault_message": reason, "fault_at": utcnow()}
            _land_server(session, payload["server_id"], {"status": SERVER_ERROR, **fault})
    log.warning("restore of backup %s failed: %s", payload["backup_id"], reason)


def _land_server(session: Session, server_id: str, values: dict[str, Any]) -> bool:
    stmt = (
        update(Server)
        .where(col(Server.id) == server_id, col(Server.task_state) == RESTORE_TASK)
        .values(task_state=None, updated_at=utcnow(), **values)
    )
    return bool(session.exec(stmt).rowcount)  # type: ignore[attr-defined]


@job_handler(RESTORE_JOB, on_fail=_restore_failed)
def run_restore(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    rid = request_id_var.get()
    with session_scope(jctx.engine) as session:
        backup = session.get(Backup, payload["backup_id"])
        assert backup is not None
        disks = children(session, backup.id) or [backup]
        _op(session, payload["op_id"], status=RUNNING, started_at=utcnow(), progress=10)
        if "volume_id" in payload:
            volume = session.get(Volume, payload["volume_id"])
            host_id = volume.host_id if volume is not None else None
        else:
            server = session.get(Server, payload["server_id"])
            host_id = server.host_id if server is not None else None
    if "volume_id" in payload:
        if host_id is not None:
            source = _file(jctx, disks[0])
            call_agent_patiently(
                jctx,
                host_id,
                f"restoring volume {payload['volume_id']}",
                lambda c: c.restore_volume(payload["volume_id"], source, request_id=rid),
            )
        with session_scope(jctx.engine) as session:
            session.exec(
                update(Volume)
                .where(col(Volume.id) == payload["volume_id"], col(Volume.status) == RESTORING_BACKUP)
                .values(status="available", updated_at=utcnow())
            )
    else:
        if host_id is None:
            raise JobFailed(BACKUP_FAILED, f"server {payload['server_id']} has no host")
        server_id = payload["server_id"]
        what = f"restoring server {server_id}"
        stop = ServerAction(action="stop")
        call_agent_patiently(jctx, host_id, what, lambda c: c.server_action(server_id, stop, request_id=rid))
        _progress(jctx, payload["op_id"], 30)
        request = ServerRestore(
            disks=[DiskRestore(backup=_file(jctx, d), volume_id=d.volume_id) for d in disks]
        )
        call_agent_patiently(
            jctx, host_id, what, lambda c: c.restore_server(server_id, request, request_id=rid)
        )
        _progress(jctx, payload["op_id"], 80)
        if payload.get("power_on", True):
            start = ServerAction(action="start")
            call_agent_patiently(
                jctx, host_id, what, lambda c: c.server_action(server_id, start, request_id=rid)
            )
        with session_scope(jctx.engine) as session:
            _land_server(session, server_id, {"status": ACTIVE if payload.get("power_on", True) else SHUTOFF})
    with session_scope(jctx.engine) as session:
        _set_backup(session, backup.id, status=AVAILABLE)
        _op(session, payload["op_id"], status=SUCCESS, progress=100, ended_at=utcnow())
    log.info("backup %s restored onto %s", backup.id, payload.get("volume_id") or payload.get("server_id"))
    return {"backup_id": backup.id}


# --- delete ---


def _delete_failed(jctx: JobContext, code: str, reason: str) -> None:
    payload = jctx.job.payload
    with session_scope(jctx.engine) as session:
        _set_backup(session, payload["backup_id"], status=ERROR, fail_reason=reason)
        _op(
            session, payload["op_id"], status=FAILED, ended_at=utcnow(), error_code=code, error_message=reason
        )


@job_handler(DELETE_JOB, on_fail=_delete_failed)
def run_delete(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    store = open_store(jctx.ctx.settings)
    with session_scope(jctx.engine) as session:
        _op(session, payload["op_id"], status=RUNNING, started_at=utcnow())
        disks = children(session, payload["backup_id"]) or [session.get(Backup, payload["backup_id"])]
    for disk in disks:
        if disk is not None:
            store.delete(f"{disk.id}.qcow2")
    with session_scope(jctx.engine) as session:
        _set_backup(session, payload["backup_id"], status=DELETED, deleted_at=utcnow(), store_key=None)
        _op(session, payload["op_id"], status=SUCCESS, progress=100, ended_at=utcnow())
    log.info("backup %s deleted", payload["backup_id"])
    return {"backup_id": payload["backup_id"]}

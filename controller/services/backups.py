"""CBR: vaults, checkpoints ("back up now"), backups, restore, delete, operation logs.

Requests are validated and recorded in one transaction (rows in their transitional status, one operation-log
row per backup and one job) and answered at once; the jobs in `jobs/handlers/backups.py` do the work. A server
backup is one parent row (no data) and one child per disk: the root disk (`system_disk`, `volume_id` None) and
every volume attached when the checkpoint was made; all children are copied from one point in time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import BadRequest, Conflict, NotFound
from controller.jobs.queue import new_job
from controller.models.backup import (
    OBJECT_TYPES,
    SERVER_TYPE,
    VOLUME_TYPE,
    Backup,
    Checkpoint,
    CreateCheckpointIn,
    CreateVaultIn,
    OperationLog,
    RestoreBackupIn,
    UpdateVaultIn,
    Vault,
)
from controller.models.common import utcnow
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services import servers as server_service
from controller.services import volumes as volume_service
from controller.services.backup_sources import unwritten_volumes_from
from controller.services.volume_state import AVAILABLE as VOLUME_AVAILABLE
from controller.services.volume_state import ERROR as VOLUME_ERROR
from controller.services.volume_state import RESTORING_BACKUP

log = logging.getLogger(__name__)

CHECKPOINT_JOB, RESTORE_JOB, DELETE_JOB = "cbrCheckpoint", "cbrRestore", "cbrDeleteBackup"

# labcloud's codes in CBR's style (Huawei documents the shape, not the strings).
BAD_REQUEST = "BackupService.0001"
VAULT_NOT_FOUND = "BackupService.6101"
BACKUP_NOT_FOUND = "BackupService.6102"
CHECKPOINT_NOT_FOUND = "BackupService.6103"
OP_LOG_NOT_FOUND = "BackupService.6104"
BACKUP_BUSY = "BackupService.6203"  # Huawei's "backup in progress"
BACKUP_FAILED = "BackupService.6300"

PROTECTING, AVAILABLE, RESTORING, DELETING, ERROR, DELETED = (
    "protecting",
    "available",
    "restoring",
    "deleting",
    "error",
    "deleted",
)
BUSY = (PROTECTING, RESTORING, DELETING)
WAITING, RUNNING, SUCCESS, FAILED = "waiting", "running", "success", "failed"
MAX_NAME = 64


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code=BAD_REQUEST)


# --- vaults ---


def get_vault(session: Session, project_id: str, vault_id: str) -> Vault:
    vault = session.get(Vault, vault_id)
    if vault is None or vault.project_id != project_id or vault.status == DELETED:
        raise NotFound(f"vault {vault_id} not found", code=VAULT_NOT_FOUND)
    return vault


def _resource(session: Session, project_id: str, res_id: str, res_type: str) -> dict[str, Any]:
    if res_type == SERVER_TYPE:
        server = server_service.get_server(session, project_id, res_id)
        return {"id": server.id, "type": SERVER_TYPE, "name": server.name}
    volume = volume_service.get_volume(session, project_id, res_id)
    return {"id": volume.id, "type": VOLUME_TYPE, "name": volume.name}


def create_vault(ctx: ControllerContext, project_id: str, body: CreateVaultIn) -> Vault:
    req = body.vault
    problems = []
    if not 1 <= len(req.name) <= MAX_NAME:
        problems.append(f"name must be 1 to {MAX_NAME} characters")
    if req.billing.object_type not in OBJECT_TYPES:
        problems.append(f"billing.object_type must be one of {', '.join(sorted(OBJECT_TYPES))}")
    if req.billing.size < 1:
        problems.append("billing.size must be at least 1 GB")
    want = OBJECT_TYPES.get(req.billing.object_type)
    problems += [
        f"resource {r.id} has type {r.type}, not {want}" for r in req.resources if want and r.type != want
    ]
    if len({r.id for r in req.resources}) != len(req.resources):
        problems.append("a resource is listed twice")
    if problems:
        raise _bad("Invalid vault: " + "; ".join(problems))
    with session_scope(ctx.engine) as session:
        resources = [_resource(session, project_id, r.id, r.type) for r in req.resources]
        vault = Vault(
            project_id=project_id,
            name=req.name,
            description=req.description or "",
            object_type=req.billing.object_type,
            size=req.billing.size,
            resources=resources,
        )
        session.add(vault)
        session.flush()
        session.refresh(vault)
    log.info("vault %s (%s) created with %d resources", vault.id, vault.object_type, len(resources))
    return vault


def list_vaults(
    session: Session, project_id: str, *, name: str | None, object_type: str | None, limit: int, offset: int
) -> tuple[int, list[Vault]]:
    stmt = select(Vault).where(Vault.project_id == project_id, Vault.status != DELETED)
    if name:
        stmt = stmt.where(Vault.name == name)
    if object_type:
        stmt = stmt.where(Vault.object_type == object_type)
    rows = list(session.exec(stmt.order_by(col(Vault.created_at), col(Vault.id))).all())
    return len(rows), rows[offset : offset + limit]


def update_vault(ctx: ControllerContext, project_id: str, vault_id: str, body: UpdateVaultIn) -> Vault:
    req = body.vault
    if req.name is not None and not 1 <= len(req.name) <= MAX_NAME:
        raise _bad(f"Invalid vault: name must be 1 to {MAX_NAME} characters")
    with session_scope(ctx.engine) as session:
        vault = get_vault(session, project_id, vault_id)
        if req.name is not None:
            vault.name = req.name
        if req.description is not None:
            vault.description = req.description
        vault.updated_at = utcnow()
        session.add(vault)
        session.flush()
        session.refresh(vault)
    return vault


def delete_vault(ctx: ControllerContext, project_id: str, vault_id: str, request_id: str) -> None:
    """Delete the vault and every backup in it (in the background); 400 while one of its backups is busy."""
    with session_scope(ctx.engine) as session:
        vault = get_vault(session, project_id, vault_id)
        backups = session.exec(
            select(Backup).where(Backup.vault_id == vault.id, Backup.status != DELETED)
        ).all()
        busy = [b.id for b in backups if b.status in BUSY]
        if busy:
            raise BadRequest(
                f"vault {vault_id} has backup tasks in progress ({', '.join(busy)})", code=BACKUP_BUSY
            )
        _check_no_volume_waits(session, [b.id for b in backups])
        vault.status, vault.deleted_at, vault.updated_at = DELETED, utcnow(), utcnow()
        session.add(vault)
        for backup in backups:
            if backup.parent_id is None:
                _start_delete(session, backup, vault, request_id)
    log.info("vault %s deleted", vault_id)
    ctx.kick_jobs()


# --- checkpoints: back up now ---


def get_checkpoint(session: Session, project_id: str, checkpoint_id: str) -> Checkpoint:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.project_id != project_id:
        raise NotFound(f"checkpoint {checkpoint_id} not found", code=CHECKPOINT_NOT_FOUND)
    return checkpoint


def create_checkpoint(
    ctx: ControllerContext, project_id: str, body: CreateCheckpointIn, request_id: str
) -> Checkpoint:
    req = body.checkpoint
    params = req.parameters
    with session_scope(ctx.engine) as session:
        vault = get_vault(session, project_id, req.vault_id)
        bound = {r["id"]: r for r in vault.resources}
        wanted = list(dict.fromkeys(params.resources)) if params.resources is not None else list(bound)
        unbound = [r for r in wanted if r not in bound]
        if unbound:
            raise _bad(f"resources {', '.join(unbound)} are not in vault {vault.id}")
        if not wanted:
            raise _bad(f"vault {vault.id} has no resources to back up")
        checkpoint = Checkpoint(
            project_id=project_id,
            vault_id=vault.id,
            name=params.name or "",
            description=params.description or "",
            status=PROTECTING,
        )
        session.add(checkpoint)
        name = params.name or f"manualbk_{utcnow():%Y%m%d%H%M%S}"
        for res_id in wanted:
            _plan_backup(session, checkpoint, vault, bound[res_id], name, params.description or "")
        session.add(
            new_job(
                project_id, CHECKPOINT_JOB, payload={"checkpoint_id": checkpoint.id}, request_id=request_id
            )
        )
        session.flush()
        session.refresh(checkpoint)
    log.info("checkpoint %s of vault %s: backing up %s", checkpoint.id, vault.id, wanted)
    ctx.kick_jobs()
    return checkpoint


def _plan_backup(
    session: Session, checkpoint: Checkpoint, vault: Vault, res: dict[str, Any], name: str, description: str
) -> None:
    """The backup rows (and operation log) for one resource, in `protecting`; 409 if the resource is busy."""
    project_id = checkpoint.project_id
    common = {
        "project_id": project_id,
        "vault_id": vault.id,
        "checkpoint_id": checkpoint.id,
        "name": name,
        "description": description,
        "status": PROTECTING,
    }
    if res["type"] == VOLUME_TYPE:
        volume = volume_service.get_volume(session, project_id, res["id"])
        if volume.status not in (VOLUME_AVAILABLE, "in-use"):
            raise Conflict(
                f"volume {volume.id} is {volume.status}; it cannot be backed up now", code=BACKUP_BUSY
            )
        if volume.host_id is None and volume.source_kind is not None:
            # Its data is still only its source's (filled at the first attach); an empty backup would lie.
            raise Conflict(
                f"volume {volume.id} has not been filled from its {volume.source_kind} yet (that happens at "
                "its first attach); attach it once before backing it up",
                code=BACKUP_BUSY,
            )
        top = Backup(
            **common,
            resource_id=volume.id,
            resource_type=VOLUME_TYPE,
            resource_name=volume.name,
            resource_size=volume.size,
            resource_az=volume.availability_zone,
            volume_id=volume.id,
            host_id=volume.host_id,
        )
        session.add(top)
    else:
        server = server_service.get_server(session, project_id, res["id"])
        if server.host_id is None or server.task_state is not None:
            raise Conflict(
                f"server {server.id} is {server.status}/{server.task_state}; it cannot be backed up now",
                code=BACKUP_BUSY,
            )
        volumes = volume_service.attached_volumes(session, server.id)
        size = server.root_volume_size + sum(v.size for v in volumes)
        top = Backup(
            **common,
            resource_id=server.id,
            resource_type=SERVER_TYPE,
            resource_name=server.name,
            resource_size=size,
            resource_az=server.availability_zone,
            host_id=server.host_id,
        )
        session.add(top)
        session.flush()
        disk = {**common, "parent_id": top.id, "resource_type": VOLUME_TYPE, "host_id": server.host_id}
        session.add(
            Backup(
                **disk,
                resource_id=server.id,
                resource_name=f"{server.name}-root",
                resource_size=server.root_volume_size,
                resource_az=server.availability_zone,
                system_disk=True,
            )
        )
        for volume in volumes:
            session.add(
                Backup(
                    **disk,
                    resource_id=volume.id,
                    resource_name=volume.name,
                    resource_size=volume.size,
                    resource_az=volume.availability_zone,
                    volume_id=volume.id,
                )
            )
    session.flush()
    session.add(_op_log("backup", top, vault, status=WAITING))


def _op_log(
    operation: str, backup: Backup, vault: Vault, *, status: str, target_id: str = ""
) -> OperationLog:
    return OperationLog(
        project_id=backup.project_id,
        operation_type=operation,
        status=status,
        checkpoint_id=backup.checkpoint_id,
        vault_id=vault.id,
        vault_name=vault.name,
        backup_id=backup.id,
        backup_name=backup.name,
        resource_id=backup.resource_id,
        resource_name=backup.resource_name,
        resource_type=backup.resource_type,
        target_id=target_id,
    )


# --- backups ---


def get_backup(session: Session, project_id: str, backup_id: str) -> Backup:
    backup = session.get(Backup, backup_id)
    if backup is None or backup.project_id != project_id or backup.status == DELETED:
        raise NotFound(f"backup {backup_id} not found", code=BACKUP_NOT_FOUND)
    return backup


def children(session: Session, backup_id: str) -> list[Backup]:
    stmt = (
        select(Backup)
        .where(Backup.parent_id == backup_id)
        .order_by(col(Backup.system_disk).desc(), col(Backup.created_at), col(Backup.id))
    )
    return list(session.exec(stmt).all())


@dataclass(frozen=True)
class BackupFilters:
    vault_id: str | None = None
    checkpoint_id: str | None = None
    resource_id: str | None = None
    resource_type: str | None = None
    parent_id: str | None = None
    status: list[str] | None = None
    name: str | None = None


def list_backups(
    session: Session, project_id: str, filters: BackupFilters, *, limit: int, offset: int
) -> tuple[int, list[Backup]]:
    """Top-level backups unless `parent_id`, `resource_id` or `checkpoint_id` narrows the search."""
    stmt = select(Backup).where(Backup.project_id == project_id, Backup.status != DELETED)
    for column, value in (
        (Backup.vault_id, filters.vault_id),
        (Backup.checkpoint_id, filters.checkpoint_id),
        (Backup.resource_id, filters.resource_id),
        (Backup.resource_type, filters.resource_type),
        (Backup.parent_id, filters.parent_id),
        (Backup.name, filters.name),
    ):
        if value:
            stmt = stmt.where(column == value)
    if not (filters.parent_id or filters.resource_id or filters.checkpoint_id):
        stmt = stmt.where(col(Backup.parent_id).is_(None))
    if filters.status:
        stmt = stmt.where(col(Backup.status).in_(filters.status))
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(
        stmt.order_by(col(Backup.created_at).desc(), col(Backup.id)).offset(offset).limit(limit)
    )
    return int(total), list(rows.all())


def _begin(session: Session, backup: Backup, to: str) -> None:
    """Compare-and-swap an available backup (and its children) into `to`; 400 (Huawei's) when busy."""
    stmt = (
        update(Backup)
        .where(col(Backup.id) == backup.id, col(Backup.status) == AVAILABLE)
        .values(status=to, updated_at=utcnow())
    )
    if session.exec(stmt).rowcount != 1:  # type: ignore[call-overload]
        raise BadRequest(f"backup {backup.id} is {backup.status}, not available", code=BACKUP_BUSY)
    session.exec(
        update(Backup).where(col(Backup.parent_id) == backup.id).values(status=to, updated_at=utcnow())
    )


def _start_delete(session: Session, backup: Backup, vault: Vault, request_id: str) -> None:
    session.exec(
        update(Backup)
        .where((col(Backup.id) == backup.id) | (col(Backup.parent_id) == backup.id))
        .values(status=DELETING, updated_at=utcnow())
    )
    op = _op_log("delete", backup, vault, status=WAITING)
    session.add(op)
    session.add(
        new_job(
            backup.project_id,
            DELETE_JOB,
            payload={"backup_id": backup.id, "op_id": op.id},
            request_id=request_id,
        )
    )


def _check_no_volume_waits(session: Session, backup_ids: list[str]) -> None:
    """400 while a volume (or a snapshot of one) made from these backups has not been filled from them yet:
    that happens at its first attach, and the data must still be in the store then."""
    waiting = unwritten_volumes_from(session, backup_ids)
    if waiting:
        raise _bad(
            f"volumes or snapshots {', '.join(sorted(waiting))} are still to be filled from this backup at "
            "their first attach; attach or delete them first"
        )


def delete_backup(ctx: ControllerContext, project_id: str, backup_id: str, request_id: str) -> None:
    with session_scope(ctx.engine) as session:
        backup = get_backup(session, project_id, backup_id)
        if backup.parent_id is not None:
            raise _bad(f"backup {backup_id} is part of server backup {backup.parent_id}; delete that one")
        if backup.status not in (AVAILABLE, ERROR):
            raise BadRequest(f"backup {backup_id} is {backup.status}; try again later", code=BACKUP_BUSY)
        _check_no_volume_waits(session, [backup.id, *(c.id for c in children(session, backup.id))])
        vault = session.get(Vault, backup.vault_id)
        assert vault is not None
        _start_delete(session, backup, vault, request_id)
    ctx.kick_jobs()


def restore_backup(
    ctx: ControllerContext, project_id: str, backup_id: str, body: RestoreBackupIn, request_id: str
) -> str:
    """Start restoring; returns the operation log id."""
    req = body.restore
    with session_scope(ctx.engine) as session:
        backup = get_backup(session, project_id, backup_id)
        if backup.parent_id is not None:
            raise _bad(f"backup {backup_id} is part of server backup {backup.parent_id}; restore that one")
        vault = session.get(Vault, backup.vault_id)
        assert vault is not None
        if backup.resource_type == VOLUME_TYPE:
            payload = _check_volume_restore(session, project_id, backup, req.volume_id)
        else:
            payload = _check_server_restore(session, project_id, backup, req.server_id, req.mappings)
            payload["power_on"] = req.power_on
        _begin(session, backup, RESTORING)
        op = _op_log("restore", backup, vault, status=WAITING, target_id=payload["target_id"])
        session.add(op)
        session.flush()
        session.add(
            new_job(
                project_id,
                RESTORE_JOB,
                payload={"backup_id": backup.id, "op_id": op.id, **payload},
                request_id=request_id,
            )
        )
        op_id = op.id
    log.info("backup %s: restore onto %s started (task %s)", backup_id, payload["target_id"], op_id)
    ctx.kick_jobs()
    return op_id


def _check_volume_restore(
    session: Session, project_id: str, backup: Backup, volume_id: str | None
) -> dict[str, Any]:
    if not volume_id:
        raise _bad("restore.volume_id is required for a volume backup")
    volume = volume_service.get_volume(session, project_id, volume_id)
    if volume.id != backup.resource_id:
        raise _bad(f"backup {backup.id} can only be restored onto its own volume {backup.resource_id}")
    if volume.status not in (VOLUME_AVAILABLE, VOLUME_ERROR):
        raise BadRequest(
            f"volume {volume.id} is {volume.status}; detach it before restoring a backup onto it",
            code=BACKUP_BUSY,
        )
    if volume.host_id is None and backup.store_key is not None:
        raise _bad(f"volume {volume.id} has never been attached; create a new volume from the backup instead")
    claimed = session.exec(
        update(Volume)
        .where(col(Volume.id) == volume.id, col(Volume.status).in_((VOLUME_AVAILABLE, VOLUME_ERROR)))
        .values(status=RESTORING_BACKUP, updated_at=utcnow())
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise BadRequest(f"volume {volume.id} changed; try again", code=BACKUP_BUSY)
    return {"volume_id": volume.id, "target_id": volume.id}


def _check_server_restore(
    session: Session, project_id: str, backup: Backup, server_id: str | None, mappings: list[Any] | None
) -> dict[str, Any]:
    if not server_id:
        raise _bad("restore.server_id is required for a server backup")
    server: Server = server_service.get_server(session, project_id, server_id)
    if server.id != backup.resource_id:
        raise _bad(f"backup {backup.id} can only be restored onto its own server {backup.resource_id}")
    disks = children(session, backup.id)
    by_id = {d.id: d for d in disks}
    for mapping in mappings or []:
        child = by_id.get(mapping.backup_id)
        if child is None:
            raise _bad(f"mapping backup {mapping.backup_id} is not a disk of backup {backup.id}")
        if mapping.volume_id != child.resource_id:
            raise _bad(f"disk backup {child.id} can only be restored onto its own disk {child.resource_id}")
    attached = {v.id for v in volume_service.attached_volumes(session, server.id)}
    gone = [d.volume_id for d in disks if d.volume_id is not None and d.volume_id not in attached]
    if gone:
        raise _bad(f"volumes {', '.join(gone)} are no longer attached to server {server.id}")
    server_service.begin_transition(session, [server], "restore")
    return {"server_id": server.id, "target_id": server.id}


# --- operation logs ---


def get_op_log(session: Session, project_id: str, op_id: str) -> OperationLog:
    op = session.get(OperationLog, op_id)
    if op is None or op.project_id != project_id:
        raise NotFound(f"operation log {op_id} not found", code=OP_LOG_NOT_FOUND)
    return op


def list_op_logs(
    session: Session, project_id: str, filters: dict[str, str | None], *, limit: int, offset: int
) -> tuple[int, list[OperationLog]]:
    stmt = select(OperationLog).where(OperationLog.project_id == project_id)
    for key, value in filters.items():
        if value:
            stmt = stmt.where(getattr(OperationLog, key) == value)
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    rows = session.exec(stmt.order_by(col(OperationLog.created_at).desc()).offset(offset).limit(limit))
    return int(total), list(rows.all())

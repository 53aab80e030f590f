"""CBR under `/v3/{project_id}/…` (vaults, checkpoints, backups, restore, operation logs) and the internal
backup-store endpoints agents stream disk data through (join token, like the image store's)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlmodel import Session, col, func, select

from controller.api.internal import require_join_token
from controller.api.request_context import request_ctx
from controller.api.streaming import consume_body, stream_chunks
from controller.auth.deps import ProjectCaller
from controller.errors import NotFound
from controller.logs import request_id_var
from controller.models.backup import (
    Backup,
    Checkpoint,
    CreateCheckpointIn,
    CreateVaultIn,
    RestoreBackupIn,
    UpdateVaultIn,
    Vault,
)
from controller.services import backups, transfer_grants
from controller.services.backup_store import StoreError, open_store
from controller.services.backup_views import backup_view, checkpoint_view, op_log_view, vault_view

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0)]


def _vault(session: Session, vault: Vault) -> dict[str, Any]:
    rows = session.exec(
        select(Backup.resource_id, func.count(), func.sum(Backup.size_bytes))
        .where(Backup.vault_id == vault.id, col(Backup.parent_id).is_(None), Backup.status != backups.DELETED)
        .group_by(col(Backup.resource_id))
    ).all()
    return vault_view(vault, {rid: (int(n), int(size or 0)) for rid, n, size in rows})


def _backup(session: Session, backup: Backup) -> dict[str, Any]:
    return backup_view(backup, backups.children(session, backup.id))


def _checkpoint(session: Session, checkpoint: Checkpoint) -> dict[str, Any]:
    vault = session.get(Vault, checkpoint.vault_id)
    assert vault is not None
    tops = session.exec(
        select(Backup).where(Backup.checkpoint_id == checkpoint.id, col(Backup.parent_id).is_(None))
    ).all()
    return checkpoint_view(checkpoint, vault, list(tops))


# --- vaults ---


@router.post("/v3/{project_id}/vaults")
def create_vault(
    project_id: str, body: CreateVaultIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    ctx = request_ctx(request)
    vault = backups.create_vault(ctx, caller.project_id, body)
    with Session(ctx.engine) as session:
        return {"vault": _vault(session, vault)}


@router.get("/v3/{project_id}/vaults")
def list_vaults(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = 1000,
    offset: Offset = 0,
    name: str | None = None,
    object_type: str | None = None,
) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        count, rows = backups.list_vaults(
            session, caller.project_id, name=name, object_type=object_type, limit=limit, offset=offset
        )
        return {
            "vaults": [_vault(session, v) for v in rows],
            "count": count,
            "limit": limit,
            "offset": offset,
        }


@router.get("/v3/{project_id}/vaults/{vault_id}")
def show_vault(project_id: str, vault_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"vault": _vault(session, backups.get_vault(session, caller.project_id, vault_id))}


@router.put("/v3/{project_id}/vaults/{vault_id}")
def update_vault(
    project_id: str, vault_id: str, body: UpdateVaultIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    ctx = request_ctx(request)
    vault = backups.update_vault(ctx, caller.project_id, vault_id, body)
    with Session(ctx.engine) as session:
        return {"vault": _vault(session, vault)}


@router.delete("/v3/{project_id}/vaults/{vault_id}", status_code=204)
def delete_vault(project_id: str, vault_id: str, caller: ProjectCaller, request: Request) -> Response:
    backups.delete_vault(request_ctx(request), caller.project_id, vault_id, request_id_var.get())
    return Response(status_code=204)


# --- checkpoints ---


@router.post("/v3/{project_id}/checkpoints")
def create_checkpoint(
    project_id: str, body: CreateCheckpointIn, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    ctx = request_ctx(request)
    checkpoint = backups.create_checkpoint(ctx, caller.project_id, body, request_id_var.get())
    with Session(ctx.engine) as session:
        return {"checkpoint": _checkpoint(session, checkpoint)}


@router.get("/v3/{project_id}/checkpoints/{checkpoint_id}")
def show_checkpoint(
    project_id: str, checkpoint_id: str, caller: ProjectCaller, request: Request
) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        checkpoint = backups.get_checkpoint(session, caller.project_id, checkpoint_id)
        return {"checkpoint": _checkpoint(session, checkpoint)}


# --- backups ---


@router.get("/v3/{project_id}/backups")
def list_backups(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = 1000,
    offset: Offset = 0,
    vault_id: str | None = None,
    checkpoint_id: str | None = None,
    resource_id: str | None = None,
    resource_type: str | None = None,
    parent_id: str | None = None,
    name: str | None = None,
    status: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    statuses = [s for value in status or [] for s in value.split(",") if s] or None
    filters = backups.BackupFilters(
        vault_id=vault_id,
        checkpoint_id=checkpoint_id,
        resource_id=resource_id,
        resource_type=resource_type,
        parent_id=parent_id,
        status=statuses,
        name=name,
    )
    with Session(request_ctx(request).engine) as session:
        count, rows = backups.list_backups(session, caller.project_id, filters, limit=limit, offset=offset)
        return {
            "backups": [_backup(session, b) for b in rows],
            "count": count,
            "limit": limit,
            "offset": offset,
        }


@router.get("/v3/{project_id}/backups/{backup_id}")
def show_backup(project_id: str, backup_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"backup": _backup(session, backups.get_backup(session, caller.project_id, backup_id))}


@router.delete("/v3/{project_id}/backups/{backup_id}", status_code=204)
def delete_backup(project_id: str, backup_id: str, caller: ProjectCaller, request: Request) -> Response:
    backups.delete_backup(request_ctx(request), caller.project_id, backup_id, request_id_var.get())
    return Response(status_code=204)


@router.post("/v3/{project_id}/backups/{backup_id}/restore", status_code=202)
def restore_backup(
    project_id: str, backup_id: str, body: RestoreBackupIn, caller: ProjectCaller, request: Request
) -> Response:
    backups.restore_backup(request_ctx(request), caller.project_id, backup_id, body, request_id_var.get())
    return Response(status_code=202)


# --- operation logs ---


@router.get("/v3/{project_id}/operation-logs")
def list_op_logs(
    project_id: str,
    caller: ProjectCaller,
    request: Request,
    limit: Limit = 1000,
    offset: Offset = 0,
    operation_type: str | None = None,
    resource_id: str | None = None,
    vault_id: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    filters = {
        "operation_type": operation_type,
        "resource_id": resource_id,
        "vault_id": vault_id,
        "status": status,
    }
    with Session(request_ctx(request).engine) as session:
        count, rows = backups.list_op_logs(session, caller.project_id, filters, limit=limit, offset=offset)
        return {
            "operation_logs": [op_log_view(o) for o in rows],
            "count": count,
            "limit": limit,
            "offset": offset,
        }


@router.get("/v3/{project_id}/operation-logs/{op_id}")
def show_op_log(project_id: str, op_id: str, caller: ProjectCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"operation_log": op_log_view(backups.get_op_log(session, caller.project_id, op_id))}


# --- the backup store, for agents ---


def _disk_backup(request: Request, backup_id: str, statuses: tuple[str, ...]) -> Backup:
    with Session(request_ctx(request).engine) as session:
        backup = session.get(Backup, backup_id)
    if backup is None or backup.status not in statuses or backup.resource_type == "OS::Nova::Server":
        raise NotFound(f"no disk backup {backup_id} to transfer", code=backups.BACKUP_NOT_FOUND)
    return backup


@router.put("/internal/backups/{backup_id}/file", dependencies=[Depends(require_join_token)])
async def upload_backup_file(backup_id: str, request: Request, grant: str | None = None) -> dict[str, Any]:
    """An agent streams a staged copy here; the store writes it in a worker thread as it arrives."""
    transfer_grants.check(request_ctx(request).settings, "backup", backup_id, "PUT", grant)
    backup = await anyio.to_thread.run_sync(_disk_backup, request, backup_id, (backups.PROTECTING,))
    store = open_store(request_ctx(request).settings)
    stored = await consume_body(request.stream(), partial(store.put, f"{backup.id}.qcow2"))
    return {"key": stored.key, "size": stored.size, "checksum": stored.checksum}


@router.get("/internal/backups/{backup_id}/file", dependencies=[Depends(require_join_token)])
def download_backup_file(backup_id: str, request: Request, grant: str | None = None) -> StreamingResponse:
    transfer_grants.check(request_ctx(request).settings, "backup", backup_id, "GET", grant)
    backup = _disk_backup(request, backup_id, (backups.AVAILABLE, backups.RESTORING, backups.PROTECTING))
    if backup.store_key is None:
        raise NotFound(f"backup {backup_id} holds no data", code=backups.BACKUP_NOT_FOUND)
    store = open_store(request_ctx(request).settings)
    try:
        size = store.stat(backup.store_key)
        if size is None:
            raise StoreError(f"backup {backup_id} is not in the store")
        chunks = store.get(backup.store_key)
    except StoreError as exc:
        raise NotFound(str(exc), code=backups.BACKUP_NOT_FOUND) from exc
    return stream_chunks(chunks, size)

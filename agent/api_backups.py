"""Agent routes for CBR backups: stage point-in-time copies, upload them, discard them, restore disks."""

from __future__ import annotations

from fastapi import APIRouter, Response

from agent.api import BackupId, ServerId, Service, VolumeId
from agent.schemas import (
    BackupFile,
    BackupTake,
    BackupUpload,
    ServerRestore,
    StagedBackup,
    UploadedBackup,
    VolumeState,
)

router = APIRouter()


@router.post("/v1/backups/take")
def take_backups(request: BackupTake, service: Service) -> list[StagedBackup]:
    return service.backups.take(request)


@router.post("/v1/backups/{backup_id}/upload")
def upload_backup(backup_id: BackupId, request: BackupUpload, service: Service) -> UploadedBackup:
    return service.backups.upload(backup_id, request.url)


@router.delete("/v1/backups/{backup_id}", status_code=204)
def discard_backup(backup_id: BackupId, service: Service) -> Response:
    service.backups.discard(backup_id)
    return Response(status_code=204)


@router.post("/v1/servers/{server_id}/restore", status_code=204)
def restore_server(server_id: ServerId, request: ServerRestore, service: Service) -> Response:
    service.backups.restore_server(server_id, request)
    return Response(status_code=204)


@router.post("/v1/volumes/{volume_id}/restore")
def restore_volume(volume_id: VolumeId, backup: BackupFile, service: Service) -> VolumeState:
    return service.backups.restore_volume(volume_id, backup)

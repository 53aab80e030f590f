"""Agent routes for moving a detached volume to another host: export it here, fetch it there."""

from __future__ import annotations

from fastapi import APIRouter

from agent import volume_moves
from agent.api import ExportId, Service, VolumeId
from agent.schemas import VolumeExport, VolumeFetch, VolumeState

router = APIRouter()


@router.post("/v1/volumes/{volume_id}/export/{export_id}")
def export_volume(volume_id: VolumeId, export_id: ExportId, service: Service) -> VolumeExport:
    """Link the detached volume's file under `exports/` and describe it (sha256); the target host fetches it
    with `GET /v1/exports/{export_id}/file`, the controller removes it with `DELETE /v1/exports/{export_id}`."""
    return volume_moves.export_volume(service, volume_id, export_id)


@router.post("/v1/volumes/{volume_id}/fetch")
def fetch_volume(volume_id: VolumeId, request: VolumeFetch, service: Service) -> VolumeState:
    return volume_moves.fetch_volume(service, volume_id, request)

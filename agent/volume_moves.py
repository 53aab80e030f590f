"""Moving a detached volume between hosts: the source host exports the volume's file, the target host fetches
it from there, and the controller tells the source to drop its copy once the target has it.

Both halves reuse existing transfer pieces: the export is a hard link of `volumes/<id>.qcow2` into `exports/`
(no copy; served by `GET /v1/exports/{id}/file` like a root-disk export, to holders of the export's own
download token, `agent.storage.export_tokens`), and the fetch is the backup download
(`agent.storage.backups.download`: streamed into a hidden `.part` file in the backup staging directory,
which the agent sweeps at start, verified by sha256, then renamed into `volumes/`). So a target killed half way
leaves no volume file, and a repeated fetch keeps a copy that already hashes right.

Works on `AgentService`'s volume locks and specs (same package), as `agent.backups` does.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from agent.errors import Conflict, NotFound, StorageError
from agent.schemas import VolumeExport, VolumeFetch, VolumeState
from agent.service import AgentService, check_server_id
from agent.storage import backups as staging
from agent.storage import export_tokens
from agent.storage.disks import image_info
from agent.storage.layout import ensure_traversable_dir, ensure_volumes_dir, export_path, volume_path

log = logging.getLogger(__name__)


def export_volume(svc: AgentService, volume_id: str, export_id: str) -> VolumeExport:
    """Offer the detached volume's file as export `export_id`; a repeat links and hashes it again."""
    _check(volume_id, export_id)
    source = volume_path(svc.state_dir, volume_id)
    with svc._server_lock(f"volume:{volume_id}"):
        if not source.is_file():
            raise NotFound(f"volume {volume_id} not found on this host")
        holder = svc._volume_holder(volume_id)
        if holder is not None:
            raise Conflict(f"volume {volume_id} is attached to server {holder} here; it cannot move")
        target = export_path(svc.state_dir, export_id)
        ensure_traversable_dir(target.parent)
        link = staging.partial_path(target)
        try:
            # rename() does nothing when both names are links of one file, so an export in place is kept.
            if not (target.exists() and os.path.samefile(source, target)):
                link.unlink(missing_ok=True)
                os.link(source, link)
                link.replace(target)
        except OSError as exc:
            raise StorageError(f"cannot export volume {volume_id}: {exc}") from exc
        finally:
            link.unlink(missing_ok=True)
        info = image_info(target, fmt="qcow2")
        if info.backing_file is not None or info.data_file is not None:
            raise StorageError(f"volume {volume_id} is not a standalone qcow2")
        export = VolumeExport(
            id=export_id,
            volume_id=volume_id,
            size=target.stat().st_size,
            virtual_size=info.virtual_size,
            checksum=file_sha256(target),
            download_token=export_tokens.issue(svc.state_dir, export_id),
        )
    log.info("volume %s exported as %s (%d bytes)", volume_id, export_id, export.size)
    return export


def fetch_volume(svc: AgentService, volume_id: str, request: VolumeFetch) -> VolumeState:
    """Make `volumes/<id>.qcow2` the exported file at `request.url`; a copy that already hashes right stays."""
    _check(volume_id)
    target = volume_path(svc.state_dir, volume_id)
    with svc._server_lock(f"volume:{volume_id}"):
        if target.is_file() and file_sha256(target) == request.checksum:
            log.info("volume %s is already here (a repeated fetch)", volume_id)
            return svc.volume_state(volume_id)
        holder = svc._volume_holder(volume_id)
        if holder is not None:
            raise Conflict(f"volume {volume_id} is attached to server {holder} here; it cannot be replaced")
        ensure_volumes_dir(svc.state_dir)
        # The name ends in .part, so an agent killed mid-download sweeps it at start (and so does its partial).
        fetched = staging.staging_dir(svc.state_dir) / f".move-{volume_id}{staging.PARTIAL_SUFFIX}"
        try:
            size = staging.download(request.url, request.token, fetched, request.checksum)
            info = image_info(fetched, fmt="qcow2")
            if info.backing_file is not None or info.data_file is not None:
                raise StorageError(f"the fetched volume {volume_id} is not a standalone qcow2")
            fetched.replace(target)  # same file system (the state directory): atomic
        except OSError as exc:
            raise StorageError(f"fetching volume {volume_id}: {exc}") from exc
        finally:
            fetched.unlink(missing_ok=True)
    log.info("volume %s fetched from %s (%d bytes)", volume_id, request.url, size)
    return svc.volume_state(volume_id)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(staging.CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check(*resource_ids: str) -> None:
    for resource_id in resource_ids:
        check_server_id(resource_id)

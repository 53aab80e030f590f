"""Disk exports: a server's root disk flattened into `<state>/exports/<id>.qcow2` on its way to the
controller's image store. The service makes the file (qemu-img or libvirt's backup job); this module describes,
serves and removes it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

from agent.errors import NotFound, StorageError
from agent.schemas import DiskExport
from agent.storage import export_tokens
from agent.storage.disks import image_info
from agent.storage.layout import export_path

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def describe_export(
    state_dir: Path, export_id: str, server_id: str, taken: Literal["running", "shutoff"]
) -> DiskExport:
    """Size, virtual size and sha256 of a finished export; the controller verifies its copy against them."""
    path = export_file(state_dir, export_id)
    info = image_info(path, fmt="qcow2")
    if info.backing_file is not None or info.data_file is not None:
        raise StorageError(f"export {path} is not a standalone qcow2")
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return DiskExport(
        id=export_id,
        server_id=server_id,
        size=path.stat().st_size,
        virtual_size=info.virtual_size,
        checksum=hasher.hexdigest(),
        consistent_with=taken,
    )


def export_file(state_dir: Path, export_id: str) -> Path:
    path = export_path(state_dir, export_id)
    if not path.is_file():
        raise NotFound(f"export {export_id} not found on this host")
    return path


def remove_export(state_dir: Path, export_id: str) -> None:
    """Delete an export and its download token (first, so a token never outlives its export); a missing one is
    already the wanted state."""
    export_tokens.revoke(state_dir, export_id)
    try:
        export_path(state_dir, export_id).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot remove export {export_id}: {exc}") from exc
    log.info("removed export %s", export_id)

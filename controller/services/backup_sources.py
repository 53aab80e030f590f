"""CBR disk backups as sources of data: a new EVS volume made from one (`backup_id`), and the file an agent
fetches from the backup store to fill a disk.

A backup's data is in the controller's store, not on a host, so a volume from a backup is made lazily at its
first attach on whatever host that is, like an empty one. Kept apart from `services/backups.py`, which imports
the volume services that call this.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from agent.schemas import BackupFile
from controller.config import Settings
from controller.errors import BadRequest, Conflict, NotFound
from controller.models.backup import VOLUME_TYPE, Backup
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume
from controller.services import transfer_grants

BACKUP = "backup"
BACKUP_NOT_FOUND = "BackupService.6102"
BAD_VOLUME_REQUEST = "EVS.2024"
BACKUP_BUSY = "EVS.2026"
_USABLE = ("available", "restoring")  # restoring only reads the stored data


def backup_file(settings: Settings, disk: Backup) -> BackupFile:
    """Where an agent GETs one disk backup (a URL with a grant for it), or `url` None for a never-written
    disk."""
    if disk.store_key is None:
        return BackupFile(url=None)
    url = transfer_grants.signed_url(settings, "backup", disk.id, "GET")
    return BackupFile(url=url, checksum=disk.checksum)


def disk_backup(session: Session, project_id: str, backup_id: str) -> Backup:
    """A usable backup of one disk (a volume backup, or one disk of a server backup) of the project.

    404 for unknown, deleted and other projects' backups; 400 for a whole-server backup (which disk?); 409 for
    one that is not available.
    """
    backup = session.get(Backup, backup_id)
    if backup is None or backup.project_id != project_id or backup.status == "deleted":
        raise NotFound(f"Backup[{backup_id}] could not be found.", code=BACKUP_NOT_FOUND)
    if backup.resource_type != VOLUME_TYPE:
        raise BadRequest(
            f"Invalid backup_id: backup {backup.id} is a whole-server backup; give the id of one of its disk "
            "backups (its children)",
            code=BAD_VOLUME_REQUEST,
        )
    if backup.status not in _USABLE:
        raise Conflict(
            f"Backup[{backup.id}] is {backup.status}; a volume can be made only from an available one.",
            code=BACKUP_BUSY,
        )
    return backup


def stored_backup_file(session: Session, settings: Settings, backup_id: str) -> BackupFile:
    """The file for a volume whose source is `backup_id`, at its first attach; NotFound once its data is gone
    (deleted, or a failed backup, whose data was removed)."""
    backup = session.get(Backup, backup_id)
    if backup is None or backup.status not in _USABLE:
        raise NotFound(f"Backup[{backup_id}] could not be found.", code=BACKUP_NOT_FOUND)
    return backup_file(settings, backup)


def unwritten_volumes_from(session: Session, backup_ids: list[str]) -> list[str]:
    """Live volumes and snapshots still to be filled from one of `backup_ids` (not yet on a host)."""
    waiting: list[str] = []
    for table in (Volume, Snapshot):
        waiting += session.exec(
            select(table.id).where(
                table.source_kind == BACKUP,
                col(table.source_id).in_(backup_ids),
                col(table.host_id).is_(None),
                table.status != "deleted",
            )
        ).all()
    return waiting

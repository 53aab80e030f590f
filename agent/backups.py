"""CBR backups on a hypervisor host: take point-in-time copies of disks, stream them to the controller's backup
store, and restore disks from it.

A backup is three idempotent calls so the controller can report progress between them and resume after a
restart: `take` stages standalone qcow2 copies in `<state>/backups/` (a running guest's disks all from one
instant through libvirt's backup job; a stopped guest's or a detached volume's with qemu-img under the locks
that keep them unplugged and powered off), `upload` streams one staged copy to the store, `discard` removes it.
A restore downloads to staging first and only then renames the new data over the disk, so a crash leaves the
old disk or the new one, never a mix.

Works on `AgentService`'s locks, specs and libvirt host (same package): a volume's lock before its holder's
server lock, as everywhere in the agent.
"""

from __future__ import annotations

import errno
import logging
import secrets
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.errors import Conflict, NotFound, StorageError, VirtError
from agent.schemas import (
    BackupDisk,
    BackupFile,
    BackupTake,
    DiskRestore,
    ServerRestore,
    StagedBackup,
    UploadedBackup,
    VolumeState,
)
from agent.storage import backups as staging
from agent.storage.disks import GIB, convert_to_qcow2, grow_volume, image_info
from agent.storage.layout import instance_paths, volume_path
from agent.storage.snapshots import fill_volume, publish

if TYPE_CHECKING:
    from agent.service import AgentService

log = logging.getLogger(__name__)

_ACTIVE = ("running", "paused")
ROOT_DEVICE = "vda"


class BackupAgent:
    def __init__(self, service: AgentService) -> None:
        self._svc = service
        self.state_dir = service.state_dir

    @property
    def _token(self) -> str:
        return self._svc.settings.join_token.get_secret_value()

    def staged_path(self, backup_id: str) -> Path:
        _check(backup_id)
        return staging.staging_dir(self.state_dir) / f"{backup_id}.qcow2"

    # ---- take, upload, discard -----------------------------------------------------------------------------

    def take(self, request: BackupTake) -> list[StagedBackup]:
        """Stage a copy of every disk in `request`; disks of one server come from one point in time."""
        if not request.disks:
            return []
        for disk in request.disks:
            _check(disk.backup_id)
            if disk.volume_id is not None:
                _check(disk.volume_id)
        if request.server_id is not None:
            _check(request.server_id)
            taken = self._take_server(request.server_id, request.disks)
        else:
            if any(d.volume_id is None for d in request.disks):
                raise Conflict("a root disk can only be backed up with its server")
            taken = {d.backup_id: self._take_volume(d) for d in request.disks}
        return [self._describe(d.backup_id, taken[d.backup_id]) for d in request.disks]

    def _take_server(self, server_id: str, disks: list[BackupDisk]) -> dict[str, str]:
        volume_ids = sorted(d.volume_id for d in disks if d.volume_id is not None)
        with ExitStack() as locks:
            for volume_id in volume_ids:
                locks.enter_context(self._svc._server_lock(f"volume:{volume_id}"))
            locks.enter_context(self._svc._server_lock(server_id))
            spec = self._svc._require_spec(server_id)
            devices = {a.volume_id: a.device for a in spec.volumes or []}
            files: dict[str, tuple[str, Path]] = {}  # backup id -> (device, disk file)
            for disk in disks:
                if disk.volume_id is None:
                    files[disk.backup_id] = (ROOT_DEVICE, instance_paths(self.state_dir, server_id).root_disk)
                elif disk.volume_id in devices:
                    files[disk.backup_id] = (
                        devices[disk.volume_id],
                        volume_path(self.state_dir, disk.volume_id),
                    )
                else:
                    raise NotFound(f"volume {disk.volume_id} is not attached to server {server_id} here")
            return self._copy(server_id, files)

    def _take_volume(self, disk: BackupDisk) -> str:
        assert disk.volume_id is not None
        volume = volume_path(self.state_dir, disk.volume_id)
        with self._svc._server_lock(f"volume:{disk.volume_id}"):
            if not volume.exists():
                raise NotFound(f"volume {disk.volume_id} not found on this host")
            holder = self._svc._volume_holder(disk.volume_id)
            if holder is None:
                return self._copy(None, {disk.backup_id: ("", volume)})[disk.backup_id]
            with self._svc._server_lock(holder):
                attachments = self._svc._require_spec(holder).volumes or []
                device = next(a.device for a in attachments if a.volume_id == disk.volume_id)
                return self._copy(holder, {disk.backup_id: (device, volume)})[disk.backup_id]

    def _copy(self, server_id: str | None, files: dict[str, tuple[str, Path]]) -> dict[str, str]:
        """Stage `files` (backup id -> (device, disk file)); returns how each copy was taken."""
        todo = {bid: df for bid, df in files.items() if not self.staged_path(bid).exists()}
        running = server_id is not None and self._svc._host.power_state(server_id) in _ACTIVE
        how = "running" if running else ("shutoff" if server_id else "detached")
        if not todo:
            return dict.fromkeys(files, how)
        partials = {bid: staging.partial_path(self.staged_path(bid)) for bid in todo}
        try:
            if running:
                assert server_id is not None
                targets = {todo[bid][0]: partials[bid] for bid in todo}
                try:
                    self._svc._host.backup_disks(server_id, targets)
                except VirtError as exc:
                    raise VirtError(f"server {server_id}: point-in-time copy failed: {exc.message}") from exc
            else:
                for bid, (_device, source) in todo.items():
                    convert_to_qcow2(source, partials[bid])
            for bid, partial in partials.items():
                partial.replace(self.staged_path(bid))
        finally:
            for partial in partials.values():
                partial.unlink(missing_ok=True)
        log.info("staged backups %s (%s, server %s)", sorted(todo), how, server_id)
        return dict.fromkeys(files, how)

    def _describe(self, backup_id: str, how: str) -> StagedBackup:
        path = self.staged_path(backup_id)
        info = image_info(path, fmt="qcow2")
        consistent: Literal["running", "shutoff", "detached"] = how  # type: ignore[assignment]
        return StagedBackup(
            backup_id=backup_id,
            size=path.stat().st_size,
            virtual_size=info.virtual_size,
            consistent_with=consistent,
        )

    def upload(self, backup_id: str, url: str) -> UploadedBackup:
        path = self.staged_path(backup_id)
        if not path.exists():
            raise NotFound(f"backup {backup_id} is not staged on this host")
        size, checksum = staging.upload(path, url, self._token)
        return UploadedBackup(backup_id=backup_id, size=size, checksum=checksum)

    def discard(self, backup_id: str) -> None:
        path = self.staged_path(backup_id)
        path.unlink(missing_ok=True)
        staging.partial_path(path).unlink(missing_ok=True)

    # ---- restore -------------------------------------------------------------------------------------------

    def restore_server(self, server_id: str, request: ServerRestore) -> None:
        """Replace the stopped server's disks (root and attached volumes) with the backups, sizes kept."""
        _check(server_id)
        volume_ids = sorted(d.volume_id for d in request.disks if d.volume_id is not None)
        with ExitStack() as locks:
            for volume_id in volume_ids:
                _check(volume_id)
                locks.enter_context(self._svc._server_lock(f"volume:{volume_id}"))
            locks.enter_context(self._svc._server_lock(server_id))
            spec = self._svc._require_spec(server_id)
            if self._svc._host.power_state(server_id) in _ACTIVE:
                raise Conflict(f"server {server_id} is running; stop it before restoring its disks")
            attached = {a.volume_id for a in spec.volumes or []}
            targets: list[tuple[DiskRestore, Path, int]] = []
            for disk in request.disks:
                if disk.volume_id is None:
                    path = instance_paths(self.state_dir, server_id).root_disk
                    targets.append((disk, path, spec.root_disk_gib))
                elif disk.volume_id in attached:
                    path = volume_path(self.state_dir, disk.volume_id)
                    targets.append((disk, path, image_info(path, fmt="qcow2").virtual_size // GIB))
                else:
                    raise NotFound(f"volume {disk.volume_id} is not attached to server {server_id} here")
            for disk, path, size_gib in targets:
                self._fill(path, size_gib, disk.backup, replace=True)
        log.info("server %s: %d disks restored from backups", server_id, len(request.disks))

    def restore_volume(self, volume_id: str, backup: BackupFile) -> VolumeState:
        """Replace a detached volume's data with a backup's, keeping its size; Conflict while attached."""
        _check(volume_id)
        path = volume_path(self.state_dir, volume_id)
        with self._svc._server_lock(f"volume:{volume_id}"):
            holder = self._svc._volume_holder(volume_id)
            if holder is not None:
                raise Conflict(f"volume {volume_id} is attached to server {holder}; detach it first")
            if not path.exists():
                raise NotFound(f"volume {volume_id} not found on this host")
            self._fill(path, image_info(path, fmt="qcow2").virtual_size // GIB, backup, replace=True)
        log.info("volume %s restored from a backup", volume_id)
        return self._svc.volume_state(volume_id)

    def fill_new_volume(self, path: Path, size_gib: int, backup: BackupFile) -> None:
        """A new volume's file with a backup's data (VolumeSource kind "backup"); an existing file is kept."""
        if not path.exists():
            self._fill(path, size_gib, backup, replace=False)

    def _fill(self, path: Path, size_gib: int, backup: BackupFile, *, replace: bool) -> None:
        if backup.url is None:
            fill_volume(path, size_gib, None, replace=replace)
            return
        if not replace and path.exists():
            return
        # Hidden and unique (two restores at once), and swept at start like every partial file.
        name = f".restore-{secrets.token_hex(4)}-{path.stem}{staging.PARTIAL_SUFFIX}"
        fetched = staging.staging_dir(self.state_dir) / name
        try:
            staging.download(backup.url, self._token, fetched, backup.checksum)
            if not self._adopt(fetched, path, size_gib, replace=replace):
                fill_volume(path, size_gib, fetched, "qcow2", replace=replace)
        except OSError as exc:
            raise StorageError(f"restoring {path.name}: {exc}") from exc
        finally:
            fetched.unlink(missing_ok=True)

    def _adopt(self, fetched: Path, path: Path, size_gib: int, *, replace: bool) -> bool:
        """Make the downloaded backup the disk itself (grown to `size_gib`), which saves a second full copy.

        The stored object is the standalone qcow2 the take step wrote; one that is anything else (a backing or
        data file, which a disk must not have) or larger than the disk is refused. False when the file cannot
        be renamed into place (another file system): the caller copies it instead.
        """
        info = image_info(fetched, fmt="qcow2")
        if info.backing_file is not None or info.data_file is not None:
            raise StorageError(f"backup for {path.name} is not a standalone qcow2")
        if info.virtual_size > size_gib * GIB:
            raise StorageError(
                f"the backup holds {info.virtual_size} bytes, more than the {size_gib} GiB of {path.name}"
            )
        grow_volume(fetched, size_gib)
        try:
            if replace:
                fetched.replace(path)
            elif not publish(fetched, path):
                log.info("%s appeared meanwhile; keeping it", path)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        log.info("%s restored from a downloaded backup (%s GiB)", path, size_gib)
        return True


def _check(resource_id: str) -> None:
    from agent.service import check_server_id  # the service imports this module

    check_server_id(resource_id)

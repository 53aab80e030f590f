"""Where the agent keeps disks on a hypervisor host.

Everything lives under one state directory (``LABCLOUD_AGENT_STATE_DIR``)::

    <state>/                          0755
        images/                       0755  base-image cache, one file per image content
            <sha256>.qcow2            0644  verified, immutable; shared backing file of many root disks
        instances/                    0755
            <server_id>/              0755  one directory per server; deleting the server removes it
                root.qcow2                  qcow2 overlay whose backing file is images/<sha256>.qcow2
                seed.iso                    NoCloud seed (volume id ``cidata``), 0640 group libvirt-qemu
                console.log                 serial console, written by QEMU
        volumes/                      0755
            <volume_id>.qcow2               data volume (qcow2, no backing file); outlives the servers it
                                            was attached to, removed only when the volume is deleted
        exports/                      0755
            <export_id>.qcow2               a server's root disk flattened for a new image, kept until the
                                            controller has copied it into its image store and deletes it
            move-<volume_id>.qcow2          a hard link of a volume moving to another host, which fetches it;
                                            removed when the move ends
            <export_id>.token         0600  the export's download token (`export_tokens`), removed with it
        backups/                      0755
            <backup_id>.qcow2               CBR disk backup staged until it is uploaded to the controller
            .restore-<token>-<disk>.part    a backup downloaded for a restore, removed once applied
            .move-<volume_id>.part          a volume fetched from another host, renamed into volumes/ once its
                                            sha256 is checked
            .<name>.part                    half-written copies and downloads; removed at agent start
        snapshots/                    0755
            <snapshot_id>.qcow2             EVS snapshot: a standalone qcow2 copy of one volume at one
                                            instant, on the volume's host; removed when the snapshot is deleted

QEMU runs as ``libvirt-qemu``. libvirt's dynamic ownership chowns the disks it is given, but not always the
backing file, and it never fixes directory modes: so every directory on the way must be traversable by others
(o+x) and base images stay world-readable (0644). Base images are never written after they are verified.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StorageError

log = logging.getLogger(__name__)

DIR_MODE = 0o755
# A server id becomes a directory name: one path component, no dots or separators that could escape <state>.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class InstancePaths:
    dir: Path
    root_disk: Path
    seed: Path
    console_log: Path


def instance_paths(state_dir: Path, server_id: str) -> InstancePaths:
    """The files of one server. Pure: creates nothing (see `ensure_instance_dir`)."""
    if not _is_safe_id(server_id):
        raise StorageError(f"server id {server_id!r} cannot be used as a directory name")
    base = Path(state_dir) / "instances" / server_id
    return InstancePaths(
        dir=base,
        root_disk=base / "root.qcow2",
        seed=base / "seed.iso",
        console_log=base / "console.log",
    )


def instance_ids(state_dir: Path) -> list[str]:
    """The servers that have a directory under `<state>/instances` (whatever else they have or lack)."""
    try:
        entries = list((Path(state_dir) / "instances").iterdir())
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and _is_safe_id(e.name))


def volume_ids(state_dir: Path) -> list[str]:
    """The volumes that have a file under `<state>/volumes`."""
    try:
        entries = list((Path(state_dir) / "volumes").iterdir())
    except FileNotFoundError:
        return []
    ids = (e.name.removesuffix(".qcow2") for e in entries if e.is_file() and e.name.endswith(".qcow2"))
    return sorted(i for i in ids if _is_safe_id(i))


def volume_path(state_dir: Path, volume_id: str) -> Path:
    """The file of one data volume. Pure: creates nothing (see `ensure_volumes_dir`)."""
    return _qcow2_file(state_dir, "volumes", "volume", volume_id)


def ensure_volumes_dir(state_dir: Path) -> Path:
    """Create `<state>/volumes` with traversable modes; idempotent."""
    return _ensure_state_subdir(state_dir, "volumes")


def snapshot_path(state_dir: Path, snapshot_id: str) -> Path:
    """The file of one volume snapshot. Pure: creates nothing (see `ensure_snapshots_dir`)."""
    return _qcow2_file(state_dir, "snapshots", "snapshot", snapshot_id)


def ensure_snapshots_dir(state_dir: Path) -> Path:
    """Create `<state>/snapshots` with traversable modes; idempotent."""
    return _ensure_state_subdir(state_dir, "snapshots")


def export_path(state_dir: Path, export_id: str) -> Path:
    """The file of one disk export (a flattened root disk on its way to the image store). Pure."""
    return _qcow2_file(state_dir, "exports", "export", export_id)


def _is_safe_id(item_id: str) -> bool:
    return _SAFE_ID.fullmatch(item_id) is not None and ".." not in item_id


def _qcow2_file(state_dir: Path, subdir: str, kind: str, item_id: str) -> Path:
    """`<state>/<subdir>/<item_id>.qcow2`, refusing an id that is not one safe file name."""
    if not _is_safe_id(item_id):
        raise StorageError(f"{kind} id {item_id!r} cannot be used as a file name")
    return Path(state_dir) / subdir / f"{item_id}.qcow2"


def _ensure_state_subdir(state_dir: Path, subdir: str) -> Path:
    ensure_traversable_dir(Path(state_dir))
    return ensure_traversable_dir(Path(state_dir) / subdir)


def image_cache_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "images"


def ensure_traversable_dir(path: Path) -> Path:
    """Create `path` (and parents) if missing and make sure others may traverse it (o+x) for QEMU."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        mode = path.stat().st_mode & 0o7777
        if mode & 0o111 != 0o111:
            path.chmod(mode | 0o111)
    except OSError as exc:
        raise StorageError(f"cannot prepare directory {path}: {exc}") from exc
    return path


def ensure_instance_dir(state_dir: Path, server_id: str) -> InstancePaths:
    """Create the server's directory (and `<state>/instances`) with traversable modes; idempotent."""
    paths = instance_paths(state_dir, server_id)
    ensure_traversable_dir(Path(state_dir))
    ensure_traversable_dir(paths.dir.parent)
    ensure_traversable_dir(paths.dir)
    return paths


def remove_instance_dir(paths: InstancePaths) -> None:
    """Delete the server's directory and everything in it; no error if it is already gone."""
    try:
        shutil.rmtree(paths.dir)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot remove {paths.dir}: {exc}") from exc
    log.info("removed instance directory %s", paths.dir)

"""Volume snapshots and filled volumes as files: standalone qcow2 copies that appear atomically.

A snapshot is a full copy of its volume, not an internal qcow2 snapshot or an overlay: the volume's file can
then be grown, rolled back (replaced) or deleted without touching the snapshot, and a new volume made from the
snapshot is again standalone. Every file is written under a temporary name and then linked (never replacing
what is there: a retried call keeps the first result) or renamed over the target (a rollback), so a crash
never leaves a half-written snapshot or volume behind a real name.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from agent.errors import StorageError
from agent.storage.disks import GIB, convert_to_qcow2, create_volume, grow_volume, image_info

log = logging.getLogger(__name__)


def temp_path(target: Path) -> Path:
    """A hidden name beside `target`, on the same file system, for writing it before it appears."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def publish(tmp: Path, target: Path) -> bool:
    """Give the finished file `tmp` the name `target`; False (and `tmp` removed) when `target` exists."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot create {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return True


def copy_volume(volume: Path, target: Path) -> bool:
    """Make `target` a standalone copy of the qcow2 `volume`, which nothing may write meanwhile.

    False when `target` already exists: it is kept as it is (the copy an earlier call made).
    """
    if target.exists():
        return False
    tmp = temp_path(target)
    try:
        convert_to_qcow2(volume, tmp)
        made = publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if made:
        log.info("snapshot %s of %s made", target.name, volume.name)
    return made


def fill_volume(
    target: Path, size_gib: int, source: Path | None, source_format: str = "qcow2", *, replace: bool = False
) -> None:
    """Write `target` as a standalone qcow2 volume of `size_gib` GiB holding the data of `source` (the image
    or snapshot file; None for an empty volume). A source larger than `size_gib` is refused.

    `replace` False keeps an existing `target` (its data is the user's); True renames the new file over it,
    which is how a rollback replaces a detached volume's data in one step.
    """
    if not replace and target.exists():
        return
    tmp = temp_path(target)
    try:
        if source is None:
            create_volume(tmp, size_gib)
        else:
            convert_to_qcow2(source, tmp, source_format=source_format)
            size = image_info(tmp, fmt="qcow2").virtual_size
            if size > size_gib * GIB:
                raise StorageError(
                    f"{source.name} holds {size} bytes, more than the {size_gib} GiB of volume {target.stem}"
                )
            grow_volume(tmp, size_gib)
        if replace:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise StorageError(f"cannot replace {target}: {exc}") from exc
        elif not publish(tmp, target):
            log.info("volume %s appeared meanwhile; keeping it", target)
            return
    finally:
        tmp.unlink(missing_ok=True)
    log.info("volume %s filled from %s (%s GiB)", target.stem, source.name if source else "nothing", size_gib)

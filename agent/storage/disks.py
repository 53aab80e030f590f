"""qcow2 disks through `qemu-img`: the only place in labcloud that runs it.

A root disk is a qcow2 overlay on a cached base image, so creating one takes milliseconds whatever the base's
size. The overlay records the base by absolute path and format (`-F`): since QEMU 7.2 a missing format is an
error, and a relative path would be resolved from the overlay's directory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import StorageError

log = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
GIB = 1024**3


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated on the host
    backing_file: Path | None  # resolved as QEMU resolves it (absolute)
    backing_format: str | None
    data_file: str | None  # qcow2 external data file, which a base image must never have


def _qemu_img(*args: str) -> str:
    cmd = [QEMU_IMG, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise StorageError(f"cannot run {QEMU_IMG}: {exc}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise StorageError(f"qemu-img {args[0]} failed: {detail}")
    return proc.stdout


def image_info(path: Path, *, fmt: str | None = None) -> ImageInfo:
    """Describe one image (not its chain). `-U` lets this work while a running guest holds the image's lock.

    Pass `fmt` to skip format probing, which matters for untrusted raw images that could look like qcow2.
    """
    args = ["info", "-U", "--output=json"]
    if fmt is not None:
        args += ["-f", fmt]
    out = _qemu_img(*args, str(path))
    try:
        data: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as exc:
        raise StorageError(f"qemu-img info printed no JSON for {path}: {exc}") from exc
    backing = data.get("full-backing-filename") or data.get("backing-filename")
    specific = data.get("format-specific", {}).get("data", {})
    return ImageInfo(
        path=Path(path),
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=Path(backing) if backing else None,
        backing_format=data.get("backing-filename-format"),
        data_file=specific.get("data-file"),
    )


def check_base_image(info: ImageInfo) -> None:
    """Refuse a base that points at other host files: a crafted image could expose them to a guest."""
    if info.backing_file is not None:
        raise StorageError(f"base image {info.path} has a backing file ({info.backing_file}); refusing it")
    if info.data_file is not None:
        raise StorageError(f"base image {info.path} has an external data file ({info.data_file}); refused")


def create_overlay(base: Path, target: Path, size_gib: int, *, base_format: str | None = None) -> None:
    """Create `target` as a qcow2 overlay of `base` with a virtual size of `size_gib` GiB.

    Idempotent: an existing target whose backing file is `base` is kept as it is (its data is the guest's).
    A target backed by anything else is an error, never overwritten. The file appears atomically (temp +
    link), so a crash cannot leave a half-made overlay that a retry would then keep.
    """
    base = Path(base).absolute()
    target = Path(target)
    st = base.stat() if base.exists() else None
    base_info = (
        _base_info(base, base_format, st.st_mtime_ns, st.st_size)
        if st is not None
        else image_info(base, fmt=base_format)
    )
    size = size_gib * GIB
    if size < base_info.virtual_size:
        raise StorageError(
            f"root disk of {size_gib} GiB would be smaller than image {base.name} "
            f"({base_info.virtual_size} bytes); refusing to shrink"
        )
    if _keep_existing(target, base, size):
        return
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        _qemu_img(
            "create", "-q", "-f", "qcow2", "-F", base_info.format, "-b", str(base), str(tmp), f"{size_gib}G"
        )
        # link() never replaces: if another call made the target meanwhile, judge that one instead.
        os.link(tmp, target)
    except FileExistsError:
        if _keep_existing(target, base, size):
            return
        raise StorageError(f"{target} appeared while it was being created") from None
    except OSError as exc:
        raise StorageError(f"cannot create overlay {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created overlay %s on %s (%s GiB)", target, base.name, size_gib)


@functools.lru_cache(maxsize=64)
def _base_info(base: Path, fmt: str | None, _mtime_ns: int, _size: int) -> ImageInfo:
    """A checked base image's info, once per file version: bases are immutable, and every create needs it."""
    info = image_info(base, fmt=fmt)
    check_base_image(info)
    return info


def create_volume(path: Path, size_gib: int) -> None:
    """Create `path` as an empty qcow2 data volume of `size_gib` GiB.

    Idempotent: an existing standalone qcow2 is kept as it is (its data is the user's, and it may have been
    extended since); anything else there is an error, never overwritten. Appears atomically, like overlays.
    """
    path = Path(path)
    if _keep_volume(path, size_gib):
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _qemu_img("create", "-q", "-f", "qcow2", str(tmp), f"{size_gib}G")
        os.link(tmp, path)
    except FileExistsError:
        if _keep_volume(path, size_gib):
            return
        raise StorageError(f"{path} appeared while it was being created") from None
    except OSError as exc:
        raise StorageError(f"cannot create volume {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created volume %s (%s GiB)", path, size_gib)


def _keep_volume(path: Path, size_gib: int) -> bool:
    """True if `path` already is a standalone qcow2; an error if it is something else."""
    if not path.exists():
        return False
    current = image_info(path, fmt="qcow2")
    if current.backing_file is not None or current.data_file is not None:
        raise StorageError(f"{path} exists but is not a standalone qcow2 volume")
    if current.virtual_size != size_gib * GIB:
        log.info("keeping volume %s at %s bytes (asked %s GiB)", path, current.virtual_size, size_gib)
    return True


def grow_volume(path: Path, size_gib: int) -> bool:
    """Grow the standalone qcow2 at `path` to `size_gib` GiB; False when it already has that size.

    Never shrinks: a smaller size is an error, as it would cut off the user's data. The file must not be in use
    by a running guest (qemu holds its write lock); a live volume grows through libvirt's blockResize instead.
    """
    path = Path(path)
    current = image_info(path, fmt="qcow2")
    size = size_gib * GIB
    if size < current.virtual_size:
        raise StorageError(
            f"volume {path.name} is {current.virtual_size} bytes; refusing to shrink it to {size_gib} GiB"
        )
    if size == current.virtual_size:
        return False
    _qemu_img("resize", "-q", "-f", "qcow2", str(path), str(size))
    log.info("grew volume %s from %s bytes to %s GiB", path, current.virtual_size, size_gib)
    return True


def convert_to_qcow2(source: Path, dest: Path, *, source_format: str = "qcow2") -> None:
    """Write `dest` as a standalone qcow2 with the data of `source` (its whole backing chain, flattened).

    Reads `source` under a shared lock: it must not be written meanwhile (a running guest's disk is copied
    through libvirt instead). `dest` is overwritten; callers write to a temporary name and rename it.
    """
    _qemu_img("convert", "-q", "-f", source_format, "-O", "qcow2", str(source), str(dest))
    log.info("copied %s to %s", source, dest)


def remove_disk(path: Path) -> None:
    """Delete a disk file; a missing file is already the wanted state."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot remove disk {path}: {exc}") from exc
    log.info("removed disk %s", path)


def _keep_existing(target: Path, base: Path, size: int) -> bool:
    """True if `target` already is an overlay of `base`; an error if it is something else."""
    if not target.exists():
        return False
    current = image_info(target, fmt="qcow2")
    if current.backing_file is None or not _same_file(current.backing_file, base):
        raise StorageError(f"{target} exists with backing file {current.backing_file}, not {base}")
    if current.virtual_size != size:
        log.info("keeping overlay %s at %s bytes (asked %s)", target, current.virtual_size, size)
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)

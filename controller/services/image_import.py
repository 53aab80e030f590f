"""Bringing an image file into the store: stream it to a staging file while hashing it, verify the sha256, check
the format with `qemu-img info`, convert raw to qcow2, and only then rename it to `<image id>.qcow2`.

The store keeps qcow2 only (agents cache and overlay qcow2 bases). A raw file is accepted only if it looks like
a disk (an MBR or GPT partition table, or an ext2/3/4 file system at offset 0): `qemu-img` calls every file it
does not recognise raw, so without that check an HTML error page would become an "image". A qcow2 with a
backing file or an external data file is refused: it would expose files of the controller's or agents' hosts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from agent.errors import StorageError
from agent.storage.disks import check_base_image, convert_to_qcow2, image_info
from controller.errors import BadRequest

log = logging.getLogger(__name__)

GIB = 1024**3
BAD_URL = "IMG.0001"  # IMS: invalid request
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MBR_SIGNATURE = b"\x55\xaa"  # at offset 510
_GPT_SIGNATURE = b"EFI PART"  # at offset 512
_EXT_MAGIC = b"\x53\xef"  # at offset 1024 + 56
FETCH_TIMEOUT_S = 30.0  # per read and for connecting; a stalled server fails the import, a slow one does not
Progress = Callable[[int, int | None], None]


class ImageImportFailed(Exception):
    """The file could not be fetched, or is not what it claims to be; `reason` says which, for the job."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImportSource:
    url: str  # without the fragment
    sha256: str | None  # expected sha256 of the bytes fetched, from a `#sha256=<hex>` fragment


def parse_source_url(url: str) -> ImportSource:
    """An http(s) URL to import from, with an optional `#sha256=<64 hex>` fragment (pip's convention: the
    fragment never leaves the client, so it rides along in IMS's `image_url` unchanged). BadRequest if not."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise BadRequest(f"Invalid image_url {url!r}: {exc}", code=BAD_URL) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(
            f"Invalid image_url {url!r}: labcloud imports from http:// or https:// URLs", code=BAD_URL
        )
    sha256 = None
    if parts.fragment:
        key, _, value = parts.fragment.partition("=")
        if key != "sha256" or not _SHA256.fullmatch(value.lower()):
            raise BadRequest(
                f"Invalid image_url fragment {parts.fragment!r}: only #sha256=<64 hex digits> is understood",
                code=BAD_URL,
            )
        sha256 = value.lower()
    return ImportSource(url=urlunsplit(parts._replace(fragment="")), sha256=sha256)


@dataclass(frozen=True)
class StoredImage:
    path: Path
    checksum: str  # sha256 of the stored qcow2 (what agents verify)
    size: int  # bytes of the stored file
    virtual_size: int
    source_format: str  # qcow2 or raw (converted)
    source_sha256: str  # of the bytes received


class StagedImage:
    """One image file on its way into the store. Write chunks, then `finish()`; `discard()` on any failure.

    The staging name is fixed per image (`.<id>.part`), so a retried job overwrites what a crashed one left.
    """

    def __init__(self, image_dir: Path, image_id: str) -> None:
        image_dir.mkdir(parents=True, exist_ok=True)
        self.target = image_dir / f"{image_id}.qcow2"
        self.part = image_dir / f".{image_id}.part"
        self._converted = image_dir / f".{image_id}.converted"
        self._hasher = hashlib.sha256()
        self.bytes_done = 0
        self._file = self.part.open("wb")

    def write(self, chunk: bytes) -> None:
        self._hasher.update(chunk)
        self._file.write(chunk)
        self.bytes_done += len(chunk)

    def finish(self, expected_sha256: str | None = None) -> StoredImage:
        """Verify, check and convert the staged bytes and move them into place as `<id>.qcow2`."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        received = self._hasher.hexdigest()
        if self.bytes_done == 0:
            raise ImageImportFailed("the file is empty")
        if expected_sha256 is not None and received != expected_sha256.lower():
            raise ImageImportFailed(
                f"checksum mismatch: the {self.bytes_done} bytes received have sha256 {received}, "
                f"expected {expected_sha256.lower()}"
            )
        fmt = _probe_format(self.part, self.bytes_done)
        if fmt == "raw":
            try:
                convert_to_qcow2(self.part, self._converted, source_format="raw")
            except StorageError as exc:
                raise ImageImportFailed(f"converting the raw image to qcow2 failed: {exc}") from exc
            self._converted.replace(self.part)
        info = image_info(self.part, fmt="qcow2")
        checksum = received if fmt == "qcow2" else _sha256_of(self.part)
        size = self.part.stat().st_size
        self.part.replace(self.target)
        log.info("stored image %s (%s, %s bytes, sha256 %s)", self.target.name, fmt, size, checksum)
        return StoredImage(self.target, checksum, size, info.virtual_size, fmt, received)

    def discard(self) -> None:
        """Remove everything this import made, the final file included."""
        if not self._file.closed:
            self._file.close()
        for path in (self.part, self._converted, self.target):
            path.unlink(missing_ok=True)


def min_disk_gib(virtual_size: int) -> int:
    return max(1, math.ceil(virtual_size / GIB))


def _probe_format(path: Path, size: int) -> str:
    try:
        info = image_info(path)
    except StorageError as exc:
        raise ImageImportFailed(f"qemu-img cannot read the file: {exc}") from exc
    if info.format == "qcow2":
        try:
            check_base_image(info)
        except StorageError as exc:
            raise ImageImportFailed(str(exc).replace(str(path), "the image")) from exc
        return "qcow2"
    if info.format != "raw":
        raise ImageImportFailed(f"the file is a {info.format} image; labcloud takes qcow2 or raw")
    if size % 512 != 0 or not _looks_like_disk(path):
        raise ImageImportFailed(
            "the file is not a disk image: qemu-img sees no qcow2 header, and as a raw disk it has no "
            "partition table or file system"
        )
    return "raw"


def _looks_like_disk(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(2048)
    return (
        head[510:512] == _MBR_SIGNATURE
        or head[512:520] == _GPT_SIGNATURE
        or head[1024 + 56 : 1024 + 58] == _EXT_MAGIC
    )


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()


def fetch_into(
    url: str,
    staged: StagedImage,
    progress: Progress,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = FETCH_TIMEOUT_S,
) -> None:
    """Stream `url` into `staged`, calling `progress(done, total)` on the way (total None if unknown)."""
    try:
        with httpx.stream(
            "GET", url, headers=dict(headers or {}), follow_redirects=True, timeout=timeout
        ) as response:
            if response.status_code != 200:
                raise ImageImportFailed(f"GET {url} answered {response.status_code} {response.reason_phrase}")
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            copy_chunks(response.iter_raw(1024 * 1024), staged, progress, total)
    except httpx.HTTPError as exc:
        raise ImageImportFailed(f"cannot fetch {url}: {type(exc).__name__}: {exc}") from exc
    if total is not None and staged.bytes_done != total:
        raise ImageImportFailed(f"GET {url} ended after {staged.bytes_done} of {total} bytes")


def copy_chunks(chunks: Iterable[bytes], staged: StagedImage, progress: Progress, total: int | None) -> None:
    """Write every chunk; report progress at most twice a second (and once at the end)."""
    last = 0.0
    progress(0, total)
    for chunk in chunks:
        staged.write(chunk)
        now = time.monotonic()
        if now - last >= 0.5:
            progress(staged.bytes_done, total)
            last = now
    progress(staged.bytes_done, total)

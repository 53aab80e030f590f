"""The host's cache of base images, keyed by the sha256 of the qcow2 file.

A cached file is complete and verified or absent: downloads go to a temp file in the cache directory, are
hashed while streaming, checked, fsynced and renamed into place. One lock per checksum makes concurrent
`ensure` calls for the same image wait for a single download. One `ImageCache` per directory per host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import httpx

from agent.errors import StorageError
from agent.schemas import ImageRef
from agent.storage.disks import check_base_image, image_info
from agent.storage.layout import ensure_traversable_dir

log = logging.getLogger(__name__)

IMAGE_MODE = 0o644
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".partial-"


class ImageCache:
    def __init__(
        self, directory: Path, client: httpx.Client | None = None, *, bearer_token: str | None = None
    ) -> None:
        """`bearer_token` authenticates downloads from the controller's image store (the join token)."""
        self.directory = ensure_traversable_dir(Path(directory))
        self._client = client
        self._headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        self._own_client = client is None
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._remove_partials()

    def path_for(self, checksum: str) -> Path:
        return self.directory / f"{_normalize(checksum)}.qcow2"

    def has(self, checksum: str) -> bool:
        return self.path_for(checksum).is_file()

    def ensure(self, image: ImageRef) -> Path:
        """Return the cached file for `image`, fetching and verifying it first if it is not there yet."""
        checksum = _normalize(image.checksum)
        target = self.path_for(checksum)
        with self._lock_for(checksum):
            if target.is_file():
                return target
            started = time.monotonic()
            size = self._fetch(image, checksum, target)
            log.info(
                "cached image %s (%s bytes, sha256 %s) in %.2f s",
                image.id,
                size,
                checksum,
                time.monotonic() - started,
            )
        return target

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def _lock_for(self, checksum: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(checksum, threading.Lock())

    def _fetch(self, image: ImageRef, checksum: str, target: Path) -> int:
        if image.disk_format != "qcow2":
            raise StorageError(f"image {image.id}: disk format {image.disk_format!r} is not qcow2")
        scheme = urlsplit(image.url).scheme
        tmp = self.directory / f"{_TMP_PREFIX}{checksum[:16]}-{secrets.token_hex(4)}"
        try:
            if scheme == "file":
                size, digest = _link_or_copy(_local_path(image.url), tmp)
            elif scheme in ("http", "https"):
                size, digest = self._download(image.url, tmp)
            else:
                raise StorageError(f"image {image.id}: unsupported URL scheme in {image.url!r}")
            if digest != checksum:
                raise StorageError(f"image {image.id}: sha256 is {digest}, expected {checksum}")
            # Pin the format: a file that only claims to be qcow2 must not be probed into something else.
            check_base_image(image_info(tmp, fmt="qcow2"))
            tmp.chmod(IMAGE_MODE)
            os.replace(tmp, target)
            _fsync_dir(self.directory)
            return size
        except OSError as exc:
            raise StorageError(f"image {image.id}: cannot store {target}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _download(self, url: str, tmp: Path) -> tuple[int, str]:
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True, headers=self._headers
            )
        hasher = hashlib.sha256()
        size = 0
        with tmp.open("xb") as out:
            try:
                with self._client.stream("GET", url) as resp:
                    resp.raise_for_status()
                    for chunk in resp.iter_bytes(_CHUNK):
                        out.write(chunk)
                        hasher.update(chunk)
                        size += len(chunk)
            except httpx.HTTPError as exc:
                raise StorageError(f"downloading {url} failed: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        return size, hasher.hexdigest()

    def _remove_partials(self) -> None:
        # Left by a crash mid-download; nothing else writes into this directory.
        for stale in self.directory.glob(f"{_TMP_PREFIX}*"):
            log.warning("removing partial download %s", stale)
            stale.unlink(missing_ok=True)


def _normalize(checksum: str) -> str:
    value = checksum.strip().lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not _SHA256.fullmatch(value):
        raise StorageError(f"image checksum {checksum!r} is not a sha256 hex digest")
    return value


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"file URL {url!r} names another host")
    return Path(url2pathname(unquote(parts.path)))


def _link_or_copy(source: Path, tmp: Path) -> tuple[int, str]:
    """All-in-one mode: the image store is on this host. Hard-link when possible (no copy), else copy.

    A hard link shares the inode, so the store's file also becomes 0644; the store must replace images by
    rename, never rewrite them in place.
    """
    if not source.is_file():
        raise StorageError(f"image file {source} does not exist")
    try:
        os.link(source, tmp)
    except OSError as exc:
        log.debug("cannot hard-link %s (%s); copying", source, exc)
        with source.open("rb") as src, tmp.open("xb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
    return _hash_file(tmp)


def _hash_file(path: Path) -> tuple[int, str]:
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Where backup data lives: a small interface (put a stream, get a stream, stat, delete) and its directory
implementation under `settings.backup_dir`.

Keys are opaque strings chosen by the controller (`<backup id>.qcow2`). Writers see a file only once it is
complete: `put` writes a hidden temporary file, checks the digest and renames it. An S3-compatible object store
fits the same interface (`put` = a multipart upload, `get` = a streaming GET, `stat` = HEAD, `delete` =
DELETE); `open_store` is the one place that would choose it from the settings.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.storage.streams import DurableFile
from controller.config import Settings

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024  # read size: each read of a download is one worker-thread hop
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


class StoreError(Exception):
    """The store could not keep or give back an object."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int  # bytes
    checksum: str  # sha256


class BackupStore(Protocol):
    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Store `chunks` under `key` (replacing what was there); atomic for readers."""
        ...

    def get(self, key: str) -> Iterator[bytes]:
        """The object's bytes; StoreError if there is none."""
        ...

    def stat(self, key: str) -> int | None:
        """The object's size in bytes, or None if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine."""
        ...


class DirectoryStore:
    """One file per key in a directory on the controller (the default: `<home>/backups`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        if not _SAFE_KEY.fullmatch(key) or ".." in key:
            raise StoreError(f"invalid backup store key {key!r}")
        return self.directory / key

    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        target = self._path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{secrets.token_hex(4)}.part"
        try:
            with DurableFile(tmp) as out:  # hashes while it writes, fsyncs in finish
                for chunk in chunks:
                    out.write(chunk)
                checksum, size = out.finish(), out.size
            tmp.replace(target)
        except OSError as exc:
            raise StoreError(f"storing {key}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        log.info("backup store: %s stored (%d bytes)", key, size)
        return StoredObject(key=key, size=size, checksum=checksum)

    def get(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except OSError as exc:
            raise StoreError(f"reading {key}: {exc}") from exc
        return _read_chunks(f)

    def stat(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        log.info("backup store: %s deleted", key)

    def sweep_partials(self) -> int:
        """Remove temporary files an interrupted upload left (run at controller start)."""
        count = 0
        for path in self.directory.glob(".*.part") if self.directory.is_dir() else []:
            path.unlink(missing_ok=True)
            count += 1
        return count


def _read_chunks(f: object) -> Iterator[bytes]:
    with f:  # type: ignore[attr-defined]
        while chunk := f.read(CHUNK):  # type: ignore[attr-defined]
            yield chunk


def open_store(settings: Settings) -> BackupStore:
    """The configured store. Only the directory store exists; an object store would be chosen here."""
    return DirectoryStore(settings.backup_store_dir)

"""Backup staging on a hypervisor host: point-in-time copies waiting to be streamed to the controller's backup
store, and backups streamed back from it for a restore.

Files live in `<state>/backups/` (see `layout.backup_path`) under their backup id; a file only gets that name
once it is complete (written under a hidden temporary name, then renamed), so after an agent restart a staged
copy is either whole or absent, and `sweep_partials` removes what an interrupted copy or download left.
Transfers are plain HTTP with the join token, like image downloads: `PUT` to upload, `GET` to download.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx

from agent.errors import StorageError
from agent.storage.layout import ensure_traversable_dir
from agent.storage.streams import BackgroundSha256, DurableFile

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
PARTIAL_SUFFIX = ".part"


def staging_dir(state_dir: Path) -> Path:
    return ensure_traversable_dir(Path(state_dir) / "backups")


def partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


def sweep_partials(state_dir: Path) -> list[Path]:
    """Remove half-written files an interrupted copy, upload or download left; returns what went."""
    directory = Path(state_dir) / "backups"
    removed = []
    for path in directory.glob(f".*{PARTIAL_SUFFIX}") if directory.is_dir() else []:
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.info("removed %d partial backup files: %s", len(removed), [p.name for p in removed])
    return removed


def _chunks(path: Path, digest: BackgroundSha256) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)  # hashed in a helper thread while this chunk is sent
            yield chunk


def upload(path: Path, url: str, token: str) -> tuple[int, str]:
    """Stream `path` to `url` with PUT; returns (bytes, sha256) as sent. The receiver checks the digest."""
    size = path.stat().st_size
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(size)}
    with BackgroundSha256() as digest:
        try:
            response = httpx.put(url, content=_chunks(path, digest), headers=headers, timeout=_TIMEOUT)
        except httpx.HTTPError as exc:
            raise StorageError(f"uploading {path.name} to {url}: {exc}") from exc
        sent = digest.hexdigest()
    if not response.is_success:
        raise StorageError(
            f"uploading {path.name} to {url}: HTTP {response.status_code} {response.text[:300]}"
        )
    stored = response.json().get("checksum") if response.content else None
    if stored != sent:
        raise StorageError(f"uploading {path.name}: the store got sha256 {stored}, {sent} was sent")
    log.info("uploaded %s (%d bytes) to %s", path.name, size, url)
    return size, sent


def download(url: str, token: str, target: Path, checksum: str | None = None) -> int:
    """Stream `url` into `target` (written under a partial name, renamed when complete and verified)."""
    partial = partial_path(target)
    try:
        with (
            httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=_TIMEOUT) as resp,
            DurableFile(partial) as out,
        ):
            if not resp.is_success:
                resp.read()
                raise StorageError(f"downloading {url}: HTTP {resp.status_code} {resp.text[:300]}")
            # The pieces as read from the socket: re-chunking them would copy every byte once more.
            for chunk in resp.iter_raw():
                out.write(chunk)
            got, size = out.finish(), out.size
        if checksum is not None and got != checksum:
            raise StorageError(f"downloading {url}: sha256 {got}, expected {checksum}")
        partial.replace(target)
    except httpx.HTTPError as exc:
        raise StorageError(f"downloading {url}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes) to %s", url, size, target)
    return size

"""Download tokens of disk exports: a random secret per export that another host may use to fetch that export's
file, and nothing else.

A volume move has the target host download the source's export directly (`GET /v1/exports/{id}/file`); it is
given this token instead of the source agent's API token, which would open the source's whole API to it. The
token lives next to the export, `exports/<export_id>.token` (0600), so it survives an agent restart (a resumed
move fetches with the token it was given) and is removed with the export (`agent.storage.exports`); a new
export under the same id gets a new token. The agent's bearer check (`agent.api.BearerAuthMiddleware`) accepts
it for that export's file only.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from agent.errors import StorageError
from agent.storage.layout import export_path

log = logging.getLogger(__name__)

TOKEN_SUFFIX = ".token"


def token_path(state_dir: Path, export_id: str) -> Path:
    return export_path(state_dir, export_id).with_suffix(TOKEN_SUFFIX)


def issue(state_dir: Path, export_id: str) -> str:
    """The export's token: the one it has, or a new one written atomically (0600) when it has none."""
    path = token_path(state_dir, export_id)
    current = _read(path)
    if current:
        return current
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):  # the first writer wins a race; all return its token
            os.link(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write the download token of export {export_id}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("export %s: new download token", export_id)
    return path.read_text().strip()


def revoke(state_dir: Path, export_id: str) -> None:
    """Forget the export's token (a missing one is already forgotten)."""
    try:
        token_path(state_dir, export_id).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot remove the download token of export {export_id}: {exc}") from exc


def accepts(state_dir: Path, export_id: str, presented: str) -> bool:
    """Whether `presented` is the download token of export `export_id`, which still exists."""
    try:
        path = token_path(state_dir, export_id)
    except StorageError:
        return False
    expected = _read(path)
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        return False
    return export_path(state_dir, export_id).is_file()  # a token never outlives its export


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""

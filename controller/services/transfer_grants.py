"""Per-transfer grants for the controller's image and backup stores, as presigned URLs.

`GET /internal/images/{id}/file`, `GET` and `PUT /internal/backups/{id}/file` open only with the grant the
controller put into the URL it handed an agent for that transfer (`ImageRef.url`, `BackupFile.url`,
`BackupUpload.url`): `?grant=<expires>.<mac>`, the mac an HMAC-SHA256 over (kind, id, method, expires) with a
key only the controller holds (`<home>/transfer-key`, 0600). The join token alone no longer opens them: every
host started with the shared one holds it, and would read every project's private images and backups, or
overwrite a backup being taken. A grant opens its one object with its one method until it expires; it is
checked when the request starts, so a long transfer may outlast it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from controller.config import Settings
from controller.errors import Unauthorized

log = logging.getLogger(__name__)

Kind = Literal["image", "backup"]
Method = Literal["GET", "PUT"]
KEY_FILE = "transfer-key"
GRANT_PARAM = "grant"
# From minting to the request's start: a spec PUT retried while its agent restarts, an upload after a long
# staging step. A grant leaks only into the agent's own logs and stored specs.
GRANT_TTL_S = 3600
AGENT_UNAUTHORIZED = "Agent.0401"

_keys: dict[Path, bytes] = {}
_keys_lock = threading.Lock()


def signed_url(
    settings: Settings, kind: Kind, object_id: str, method: Method, *, now: float | None = None
) -> str:
    """The store URL of one image or backup file with a grant for `method` on it."""
    expires = int(now if now is not None else time.time()) + GRANT_TTL_S
    grant = f"{expires}.{_mac(settings, kind, object_id, method, expires)}"
    return f"{settings.endpoint}/internal/{kind}s/{quote(object_id, safe='')}/file?{GRANT_PARAM}={grant}"


def check(settings: Settings, kind: Kind, object_id: str, method: Method, grant: str | None) -> None:
    """401 unless `grant` was minted for exactly this object and method and has not expired."""
    what = f"{method} of {kind} {object_id}"
    expires_text, _, mac = (grant or "").partition(".")
    if not expires_text.isdigit() or not mac:
        raise Unauthorized(
            f"{what} needs the transfer grant the controller issued for it", code=AGENT_UNAUTHORIZED
        )
    expected = _mac(settings, kind, object_id, method, int(expires_text))
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise Unauthorized(f"the transfer grant is not valid for {what}", code=AGENT_UNAUTHORIZED)
    if int(expires_text) <= time.time():
        raise Unauthorized(f"the transfer grant for {what} has expired", code=AGENT_UNAUTHORIZED)


def _mac(settings: Settings, kind: str, object_id: str, method: str, expires: int) -> str:
    message = "\n".join((kind, object_id, method, str(expires))).encode()
    digest = hmac.new(_key(settings.home / KEY_FILE), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _key(path: Path) -> bytes:
    with _keys_lock:
        key = _keys.get(path)
        if key is None:
            key = _keys[path] = _load_or_create(path)
        return key


def _load_or_create(path: Path) -> bytes:
    """The saved key, or a new one written atomically (the first of several controllers on one home wins)."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)  # fails if another process wrote it first
        log.info("new transfer grant key in %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip().encode()

"""The secret this agent accepts from the controller, kept in `<state>/api-token` (0600).

The agent reports it in every heartbeat. A per-host join token cannot serve for calls the other way, since the
controller keeps only its hash; the join token is accepted too, but only until the controller has accepted a
heartbeat reporting this token (`agent.api.BearerAuthMiddleware`): every host started with the shared join
token holds it.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

API_TOKEN_FILE = "api-token"


def load_or_create(state_dir: Path) -> str:
    """The saved token, or a new one written atomically (the first writer wins a race)."""
    path = Path(state_dir) / API_TOKEN_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{API_TOKEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)  # fails if another process wrote it first
        log.info("new agent API token in %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()

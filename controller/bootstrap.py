"""First start: the admin project, its AK/SK written to credentials.json (0600), and the agents' join token."""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import select

from controller.config import Settings
from controller.db import session_scope
from controller.models.project import Credential, Project

log = logging.getLogger(__name__)

ADMIN_PROJECT = "admin"


def new_access_key() -> str:
    return "LC" + secrets.token_hex(9).upper()


def new_secret_key() -> str:
    return secrets.token_urlsafe(30)


def write_private(path: Path, text: str) -> None:
    """Write a file only root can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_join_token(settings: Settings) -> str:
    path = settings.join_token_file
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def ensure_admin_credentials(settings: Settings, engine: Engine) -> Credential:
    """Reuse the credentials in credentials.json if the database knows them, else issue new ones."""
    existing = _read_credentials(settings.credentials_file)
    with session_scope(engine) as session:
        project = session.exec(select(Project).where(Project.name == ADMIN_PROJECT)).first()
        if project is None:
            project = Project(name=ADMIN_PROJECT)
            session.add(project)
            session.flush()
        cred = session.get(Credential, existing["ak"]) if existing else None
        if cred is None or cred.revoked_at is not None or cred.project_id != project.id:
            cred = Credential(
                access_key=new_access_key(), secret_key=new_secret_key(), project_id=project.id, is_admin=True
            )
            session.add(cred)
            log.info("issued admin credentials %s for project %s", cred.access_key, project.id)
        session.flush()
        session.refresh(cred)
    doc = {
        "endpoint": settings.endpoint,
        "region": settings.region,
        "ak": cred.access_key,
        "sk": cred.secret_key,
        "project_id": cred.project_id,
    }
    if existing != doc:
        write_private(settings.credentials_file, json.dumps(doc, indent=2) + "\n")
    return cred


def _read_credentials(path: Path) -> dict[str, str] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "ak" in doc else None

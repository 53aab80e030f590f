"""`X-Client-Token` on server create: the same token and body replay the first answer; another body is 409.

The token row is written in the create's own transaction, so a token names exactly one set of servers: a
concurrent duplicate fails on the (project, token) primary key, rolls back, and replays the winner's answer.
Tokens older than the TTL are forgotten and may be used again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy import delete
from sqlmodel import Session, col

from controller.errors import BadRequest, Conflict
from controller.models.common import utcnow
from controller.models.quota import ClientToken

log = logging.getLogger(__name__)

TOKEN_MAX = 64
TOKEN_REUSED = "Ecs.0213"  # labcloud's own code, beside its other job and request codes


@dataclass(frozen=True)
class Replay:
    job_id: str
    server_ids: list[str]


def check_token(token: str) -> str:
    if not 1 <= len(token) <= TOKEN_MAX or not token.isprintable():
        raise BadRequest(f"Invalid X-Client-Token: use 1-{TOKEN_MAX} printable characters")
    return token


def body_digest(body: BaseModel) -> str:
    """SHA-256 of the parsed body in a canonical form, so key order and whitespace do not matter."""
    canonical = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find(session: Session, project_id: str, token: str, digest: str, ttl: timedelta) -> Replay | None:
    """The earlier answer for this token, None if there is none (or it expired); 409 if the body differs."""
    row = session.get(ClientToken, (project_id, token))
    if row is None or row.created_at < utcnow() - ttl:
        return None
    if row.body_sha256 != digest:
        raise Conflict(
            f"X-Client-Token {token!r} was already used for a different request (job {row.job_id})",
            code=TOKEN_REUSED,
        )
    log.info("replaying create job %s for client token %r in project %s", row.job_id, token, project_id)
    return Replay(row.job_id, list(row.server_ids))


def remember(
    session: Session,
    project_id: str,
    token: str,
    digest: str,
    replay: Replay,
    ttl: timedelta,
) -> None:
    """Record the answer in the caller's transaction; the project's expired tokens go on the way."""
    session.exec(
        delete(ClientToken).where(  # type: ignore[call-overload]
            col(ClientToken.project_id) == project_id, col(ClientToken.created_at) < utcnow() - ttl
        )
    )
    session.add(
        ClientToken(
            project_id=project_id,
            token=token,
            body_sha256=digest,
            job_id=replay.job_id,
            server_ids=replay.server_ids,
        )
    )
    session.flush()

"""Per-host join tokens: issued by an admin, presented by one agent as its bearer token, stored as sha256 only.

A token is bound to a host id: the one named when it was issued, or else the one its first registration
claims. An unbound token past `expires_at` is refused; a bound one works until it is revoked. Revoking a token
marks its host down at once (its heartbeats are refused from then on), so the reconciler treats the host's
servers like those of any host that stopped heartbeating. The shared bootstrap token (`<home>/join-token`,
which `labcloud up` gives the local agent) is checked in `controller.api.internal` and never stored here.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.errors import BadRequest, NotFound, Unauthorized
from controller.models.common import iso_z, utcnow
from controller.models.host import Host
from controller.models.project import JoinToken

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lcjt-"
TOKEN_NOT_FOUND = "Ecs.0114"
AGENT_UNAUTHORIZED = "Agent.0401"
MAX_EXPIRES_S = 10 * 365 * 86400
MAX_HOST_ID, MAX_DESCRIPTION = 64, 255


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(
    session: Session, *, host_id: str | None, expires_in: int | None, description: str | None
) -> tuple[JoinToken, str]:
    """A new token (the row, and the secret, which is never stored)."""
    if host_id is not None and not 1 <= len(host_id) <= MAX_HOST_ID:
        raise BadRequest(f"Invalid host_id: 1 to {MAX_HOST_ID} characters")
    if expires_in is not None and not 1 <= expires_in <= MAX_EXPIRES_S:
        raise BadRequest(f"Invalid expires_in {expires_in}: 1 to {MAX_EXPIRES_S} seconds")
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise BadRequest(f"Invalid description: at most {MAX_DESCRIPTION} characters")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = JoinToken(
        token_sha256=digest(secret),
        host_id=host_id,
        description=description or "",
        expires_at=utcnow() + timedelta(seconds=expires_in) if expires_in else None,
    )
    session.add(row)
    session.flush()
    log.info("issued join token %s (host %s, expires %s)", row.id, host_id or "any", row.expires_at)
    return row, secret


def list_tokens(session: Session) -> list[JoinToken]:
    return list(session.exec(select(JoinToken).order_by(col(JoinToken.created_at), col(JoinToken.id))).all())


def revoke(session: Session, token_id: str, dead_after: float) -> JoinToken:
    """Revoke a token (again is a no-op); its host is marked down now rather than after missed heartbeats."""
    row = session.get(JoinToken, token_id)
    if row is None:
        raise NotFound(f"Join token {token_id} could not be found.", code=TOKEN_NOT_FOUND)
    if row.revoked_at is not None:
        return row
    row.revoked_at = utcnow()
    session.add(row)
    if row.host_id is not None:
        # A heartbeat older than `dead_after` is what "down" means everywhere (scheduler, reconciler, views).
        silent_since = row.revoked_at - timedelta(seconds=dead_after + 1)
        session.exec(
            update(Host)
            .where(col(Host.id) == row.host_id, col(Host.last_heartbeat) > silent_since)
            .values(last_heartbeat=silent_since)
        )  # type: ignore[call-overload]
    session.flush()
    log.info("revoked join token %s (host %s)", token_id, row.host_id)
    return row


def valid_token(session: Session, token: str, *, lock: bool = False) -> JoinToken:
    """The live token with this secret; 401 if unknown, revoked, or unbound and expired.

    `lock` holds the row until the transaction ends (PostgreSQL), so a heartbeat that passed the check
    cannot write its host's `last_heartbeat` after a revocation that committed meanwhile.
    """
    stmt = select(JoinToken).where(JoinToken.token_sha256 == digest(token))
    row = session.exec(stmt.with_for_update() if lock else stmt).first()
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("unknown or revoked join token", code=AGENT_UNAUTHORIZED)
    if row.host_id is None and row.expires_at is not None and _aware(row.expires_at) <= now:
        raise Unauthorized(f"join token {row.id} expired unused", code=AGENT_UNAUTHORIZED)
    return row


def admit(session: Session, token: str, host_id: str) -> JoinToken:
    """Check that `token` may register or heartbeat `host_id`, binding an unbound token to it."""
    row = valid_token(session, token, lock=True)
    if row.host_id is None:
        taken = session.exec(
            select(JoinToken.id).where(
                JoinToken.host_id == host_id, col(JoinToken.revoked_at).is_(None), JoinToken.id != row.id
            )
        ).first()
        if taken is not None:
            raise Unauthorized(
                f"host {host_id} already has its own join token; issue one with --host-id to replace it",
                code=AGENT_UNAUTHORIZED,
            )
        now = utcnow()
        bound = session.exec(
            update(JoinToken)
            .where(col(JoinToken.id) == row.id, col(JoinToken.host_id).is_(None))
            .values(host_id=host_id, used_at=now)
        )  # type: ignore[call-overload]
        session.refresh(row)
        if bound.rowcount == 1:
            log.info("join token %s now bound to host %s", row.id, host_id)
    if row.host_id != host_id:
        raise Unauthorized(f"join token {row.id} belongs to another host", code=AGENT_UNAUTHORIZED)
    if row.used_at is None:
        row.used_at = utcnow()
        session.add(row)
    return row


def refuse_shared_for(session: Session, host_id: str) -> None:
    """401 when `host_id` has (or had) a join token of its own: the shared bootstrap token, which every host
    started with it holds, may not re-register such a host, bring it back after a revocation or change its URL
    and API token."""
    own = session.exec(select(JoinToken.id).where(JoinToken.host_id == host_id)).first()
    if own is not None:
        raise Unauthorized(
            f"host {host_id} has its own join token ({own}); the shared one cannot register it",
            code=AGENT_UNAUTHORIZED,
        )


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def token_view(row: JoinToken, secret: str | None = None) -> dict[str, Any]:
    if row.revoked_at is not None:
        status = "revoked"
    elif row.host_id is None and row.expires_at is not None and _aware(row.expires_at) <= utcnow():
        status = "expired"
    else:
        status = "bound" if row.used_at is not None else "unused"
    view: dict[str, Any] = {
        "id": row.id,
        "host_id": row.host_id,
        "description": row.description,
        "status": status,
        "created_at": iso_z(row.created_at),
        "expires_at": iso_z(row.expires_at),
        "used_at": iso_z(row.used_at),
        "revoked_at": iso_z(row.revoked_at),
    }
    if secret is not None:
        view["token"] = secret
    return view

"""Request authentication: every public API call is AK/SK signed; the caller is scoped to its project."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.engine import Engine
from sqlmodel import Session

from controller.auth import signature
from controller.errors import Forbidden, Unauthorized
from controller.models.project import Credential

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class Caller:
    access_key: str
    project_id: str
    user_id: str
    is_admin: bool


@dataclass(frozen=True)
class _CachedKey:
    secret_key: str
    caller: Caller
    fetched_at: float


class CredentialCache:
    """AK → SK lookups without a database round trip per request.

    A revocation through this process's admin API calls `forget` and is refused at once; one made through
    another controller process sharing the database is seen here within `ttl` seconds.
    """

    def __init__(self, engine: Engine, ttl: float = 10.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._entries: dict[str, _CachedKey] = {}
        self._lock = threading.Lock()
        # Bumped by `forget`: a lookup that read the database before a revocation committed must not cache it.
        self._generation = 0

    def lookup(self, access_key: str) -> _CachedKey | None:
        with self._lock:
            hit = self._entries.get(access_key)
        if hit is not None and time.monotonic() - hit.fetched_at < self.ttl:
            return hit
        with self._lock:
            generation = self._generation
        with Session(self.engine) as session:
            cred = session.get(Credential, access_key)
        if cred is None or cred.revoked_at is not None:
            with self._lock:
                self._entries.pop(access_key, None)
            return None
        entry = _CachedKey(
            cred.secret_key,
            Caller(cred.access_key, cred.project_id, cred.user_id, cred.is_admin),
            time.monotonic(),
        )
        with self._lock:
            if self._generation == generation:
                self._entries[access_key] = entry
        return entry

    def forget(self, access_key: str) -> None:
        with self._lock:
            self._generation += 1
            self._entries.pop(access_key, None)


async def authenticate(request: Request) -> Caller:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized(
            "Missing Authorization header: requests must be signed with AK/SK (SDK-HMAC-SHA256)"
        )
    try:
        auth = signature.parse_authorization(header)
    except signature.SignatureError as exc:
        raise Unauthorized(f"Incorrect IAM authentication information: {exc}") from None
    ctx = request.app.state.ctx
    cache: CredentialCache = ctx.credentials
    entry = cache.lookup(auth.access_key)
    if entry is None:
        entry = await run_in_threadpool(cache.lookup, auth.access_key)
    if entry is None:
        raise Unauthorized("Incorrect IAM authentication information: unknown or revoked access key")
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    try:
        signature.verify(
            secret_key=entry.secret_key,
            auth=auth,
            method=request.method,
            path=raw_path,
            query=parse_qsl(request.url.query, keep_blank_values=True),
            headers=request.headers,
            body=await _signed_body(request),
            now=datetime.now(UTC),
            max_skew_seconds=ctx.settings.signature_skew_seconds,
        )
    except signature.SignatureError as exc:
        raise Unauthorized(f"Incorrect IAM authentication information: {exc}") from None
    # Throttle only verified callers, so nobody can drain another credential's bucket.
    if ctx.rate_limiter is not None:
        ctx.rate_limiter.check(entry.caller.access_key)
    header_project = request.headers.get("x-project-id")
    if header_project and header_project != entry.caller.project_id and not entry.caller.is_admin:
        raise Forbidden(
            f"X-Project-Id {header_project} is not the project of this access key", code="APIGW.0302"
        )
    return entry.caller


async def _signed_body(request: Request) -> bytes:
    """The body the signature covers. With `X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD` the signature covers that
    literal instead of the body, so the body stays unread and a route can stream it (image uploads)."""
    if request.headers.get("x-sdk-content-sha256") == UNSIGNED_PAYLOAD:
        return b""
    return await request.body()


CallerDep = Annotated[Caller, Depends(authenticate)]


async def project_caller(project_id: str, caller: CallerDep) -> Caller:
    """The caller, checked against the `{project_id}` in the path. `async` only because it does no I/O: FastAPI
    runs a plain `def` dependency in the thread pool, a hand-off that cost more than the check."""
    if project_id != caller.project_id:
        raise Forbidden(f"The access key belongs to another project than {project_id}", code="APIGW.0302")
    return caller


ProjectCaller = Annotated[Caller, Depends(project_caller)]

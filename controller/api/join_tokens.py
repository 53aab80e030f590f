"""Operator API for per-host join tokens (admin credentials only, anyone else 403).

`POST /v1/admin/join-tokens` (`{"join_token": {"host_id"?, "expires_in"? (s), "description"?}}`; the answer
is the only one that carries the token), `GET /v1/admin/join-tokens`, `DELETE /v1/admin/join-tokens/{id}`
(revoke: the agent's next heartbeat is refused and its host is down at once).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session

from controller.api.admin import AdminCaller
from controller.api.request_context import request_ctx
from controller.db import session_scope
from controller.services import join_tokens

router = APIRouter()


class JoinTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    host_id: str | None = None
    expires_in: int | None = None
    description: str | None = None


class JoinTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    join_token: JoinTokenIn


@router.post("/v1/admin/join-tokens", status_code=201)
def issue_token(caller: AdminCaller, request: Request, body: JoinTokenBody | None = None) -> dict[str, Any]:
    want = body.join_token if body else JoinTokenIn()
    with session_scope(request_ctx(request).engine) as session:
        row, secret = join_tokens.issue(
            session, host_id=want.host_id, expires_in=want.expires_in, description=want.description
        )
        return {"join_token": join_tokens.token_view(row, secret)}


@router.get("/v1/admin/join-tokens")
def list_tokens(caller: AdminCaller, request: Request) -> dict[str, Any]:
    with Session(request_ctx(request).engine) as session:
        return {"join_tokens": [join_tokens.token_view(t) for t in join_tokens.list_tokens(session)]}


@router.delete("/v1/admin/join-tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, caller: AdminCaller, request: Request) -> Response:
    ctx = request_ctx(request)
    with session_scope(ctx.engine) as session:
        join_tokens.revoke(session, token_id, ctx.settings.host_dead_seconds)
    return Response(status_code=204)

"""HTTP surface of the agent: routes, bearer auth, request ids and the one error shape.

Routes are plain `def`: FastAPI runs them in its thread pool, where the service may block on libvirt, qemu-img
and netlink.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import AgentFailure
from agent.schemas import (
    AgentError,
    ConsoleOutput,
    HostInfo,
    SecurityGroupSpec,
    ServerAction,
    ServerSpec,
    ServerState,
)
from agent.service import SERVER_ID_PATTERN, AgentService, InvalidRequest

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("labcloud_request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Sets `record.request_id` for `%(request_id)s` in formats; attach it to handlers, not loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestIdMiddleware:
    """Takes the caller's X-Request-Id (or makes one), exposes it to logging and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = incoming[:128] if incoming else f"req-{uuid.uuid4()}"
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class Unauthorized(AgentFailure):
    code = "Agent.0401"
    status = 401


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = AgentError(code=code, message=message).model_dump()
    return JSONResponse(status_code=status, content=body, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the agent as `{"code", "message"}` with a meaningful status; never FastAPI's 422."""

    @app.exception_handler(AgentFailure)
    async def _agent_failure(request: Request, exc: AgentFailure) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s failed: %s %s", request.method, request.url.path, exc.code, exc.message)
        else:
            log.info("%s %s refused: %s %s", request.method, request.url.path, exc.code, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return _error(400, InvalidRequest.code, problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"Agent.{exc.status_code:04d}", str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s crashed", request.method, request.url.path)
        return _error(500, AgentFailure.code, f"internal error: {type(exc).__name__}")


def _service(request: Request) -> AgentService:
    service: AgentService = request.app.state.service
    return service


def _require_token(request: Request) -> None:
    expected: str = request.app.state.join_token
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token")


Service = Annotated[AgentService, Depends(_service)]
ServerId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]

router = APIRouter(dependencies=[Depends(_require_token)])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/host")
def get_host(service: Service) -> HostInfo:
    return service.host_info()


@router.put("/v1/servers/{server_id}")
def put_server(server_id: ServerId, spec: ServerSpec, service: Service) -> ServerState:
    if spec.id != server_id:
        raise InvalidRequest(f"body id {spec.id!r} does not match path id {server_id!r}")
    return service.ensure_server(spec)


@router.get("/v1/servers/{server_id}")
def get_server(server_id: ServerId, service: Service) -> ServerState:
    return service.server_state(server_id)


@router.delete("/v1/servers/{server_id}", status_code=204)
def delete_server(server_id: ServerId, service: Service) -> Response:
    service.delete_server(server_id)
    return Response(status_code=204)


@router.post("/v1/servers/{server_id}/action")
def server_action(server_id: ServerId, action: ServerAction, service: Service) -> ServerState:
    return service.server_action(server_id, action)


@router.get("/v1/servers/{server_id}/console")
def console(
    server_id: ServerId, service: Service, length: Annotated[int | None, Query(ge=1)] = None
) -> ConsoleOutput:
    return ConsoleOutput(output=service.console_output(server_id, length))


@router.put("/v1/security-groups", status_code=204)
def put_security_groups(groups: list[SecurityGroupSpec], service: Service) -> Response:
    service.update_security_groups(groups)
    return Response(status_code=204)

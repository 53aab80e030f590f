"""HTTP surface of the agent: routes, bearer auth, request ids and the one error shape.

Routes are plain `def`: FastAPI runs them in its thread pool, where the service may block on libvirt, qemu-img
and netlink.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import pathlib
import re
import threading
import uuid
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import AgentFailure
from agent.schemas import (
    AgentError,
    ConsoleOutput,
    DiskExport,
    ExternalSpec,
    HostInfo,
    NetworkSpec,
    OverlaySpec,
    RebuildRequest,
    SecurityGroupSpec,
    ServerAction,
    ServerSpec,
    ServerState,
    SnapshotSpec,
    SnapshotState,
    VolumeAttachment,
    VolumeRollback,
    VolumeSpec,
    VolumeState,
)
from agent.service import SERVER_ID_PATTERN, AgentService, InvalidRequest
from agent.storage import export_tokens
from agent.storage.exports import export_file

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
UNAUTHORIZED_CODE = "Agent.0401"
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


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
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
        return _error(exc.status, exc.code, exc.message)

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


class CrashGuardMiddleware:
    """Turns an unexpected exception into the agent's 500 error shape.

    Starlette would handle it in its outermost middleware, outside RequestIdMiddleware, so the log line and
    the response would lose the request id; this sits inside it instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("%s %s crashed", scope["method"], scope["path"])
            if started:  # too late for an error response; let the server drop the connection
                raise
            response = _error(500, AgentFailure.code, f"internal error: {type(exc).__name__}")
            await response(scope, receive, send)


def _service(request: Request) -> AgentService:
    service: AgentService = request.app.state.service
    return service


_EXPORT_FILE = re.compile(f"/v1/exports/({SERVER_ID_PATTERN.removeprefix('^').removesuffix('$')})/file")


class BearerAuthMiddleware:
    """Refuses every request, known path or not, that lacks an accepted `Authorization: Bearer` secret:

    - one of `also`: the agent's API token (`agent.api_token`), which the controller calls it with;
    - `token`, its join token, only until `api_token_known` is set (the controller accepted a heartbeat that
      reported the API token): the controller never needs it after that, and every host registered with the
      shared join token holds it, so accepting it for good would let hosts drive each other's agents;
    - an export's download token (`agent.storage.export_tokens`, under `state_dir`), for
      `GET /v1/exports/{that id}/file` only: what another host fetching a moving volume is given.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        also: tuple[str, ...] = (),
        *,
        api_token_known: threading.Event | None = None,
        state_dir: pathlib.Path | None = None,
    ) -> None:
        self.app = app
        self._join = f"bearer {token}".encode()
        self._accepted = [f"bearer {t}".encode() for t in also]
        self._api_token_known = api_token_known or threading.Event()
        self._state_dir = state_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            log.info("%s %s refused: missing or wrong bearer token", scope["method"], scope["path"])
            headers = {"WWW-Authenticate": "Bearer"}
            response = _error(401, UNAUTHORIZED_CODE, "missing or wrong bearer token", headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        presented = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = presented.partition(b" ")
        given = scheme.lower() + b" " + token.strip()
        # Compare with every accepted token, so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(given, expected) for expected in self._accepted]
        if any(matches):
            return True
        if hmac.compare_digest(given, self._join):
            if not self._api_token_known.is_set():
                return True
            log.info("the join token is not accepted once the controller knows this agent's API token")
            return False
        export = _EXPORT_FILE.fullmatch(scope["path"]) if scope["method"] == "GET" else None
        if export is None or self._state_dir is None or scheme.lower() != b"bearer":
            return False
        return export_tokens.accepts(self._state_dir, export.group(1), token.strip().decode("latin-1"))


Service = Annotated[AgentService, Depends(_service)]
ServerId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]
VolumeId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]
BackupId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]

router = APIRouter()


def _require_path_id(body_id: str, path_id: str) -> None:
    """A PUT/POST body names the resource its path names (a mismatch is a caller bug, never guessed at)."""
    if body_id != path_id:
        raise InvalidRequest(f"body id {body_id!r} does not match path id {path_id!r}")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/host")
def get_host(service: Service) -> HostInfo:
    return service.host_info()


@router.put("/v1/servers/{server_id}")
def put_server(server_id: ServerId, spec: ServerSpec, service: Service) -> ServerState:
    _require_path_id(spec.id, server_id)
    return service.ensure_server(spec)


@router.post("/v1/servers/{server_id}/resize")
def resize_server(server_id: ServerId, spec: ServerSpec, service: Service) -> ServerState:
    _require_path_id(spec.id, server_id)
    return service.resize_server(spec)


@router.post("/v1/servers/{server_id}/rebuild")
def rebuild_server(server_id: ServerId, request: RebuildRequest, service: Service) -> ServerState:
    _require_path_id(request.spec.id, server_id)
    return service.rebuild_server(request.spec, request.rebuild_id)


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


@router.put("/v1/networks/{vpc_id}/overlay", status_code=204)
def put_overlay(vpc_id: VolumeId, spec: OverlaySpec, service: Service) -> Response:
    """The VPC's VXLAN peers and remote ports; a host without that VPC has nothing to update (still 204)."""
    service.set_overlay(vpc_id, spec)
    return Response(status_code=204)


@router.put("/v1/external", status_code=204)
def put_external(spec: ExternalSpec, service: Service) -> Response:
    """EIPs bound to this host's ports and the shared-SNAT VPCs; a host without an external network ignores it."""
    service.set_external(spec)
    return Response(status_code=204)


@router.put("/v1/networks/{vpc_id}", status_code=204)
def put_network(vpc_id: VolumeId, spec: NetworkSpec, service: Service) -> Response:
    """The VPC's current subnets (a subnet update); a host without that VPC has nothing to update (still 204)."""
    if spec.vpc_id != vpc_id:
        raise InvalidRequest(f"the body describes VPC {spec.vpc_id}, the path {vpc_id}")
    service.update_network(spec)
    return Response(status_code=204)


@router.post("/v1/servers/{server_id}/volumes")
def attach_volume(server_id: ServerId, attachment: VolumeAttachment, service: Service) -> VolumeAttachment:
    return service.attach_volume(server_id, attachment)


@router.delete("/v1/servers/{server_id}/volumes/{volume_id}", status_code=204)
def detach_volume(server_id: ServerId, volume_id: VolumeId, service: Service) -> Response:
    service.detach_volume(server_id, volume_id)
    return Response(status_code=204)


@router.put("/v1/volumes/{volume_id}")
def put_volume(volume_id: VolumeId, spec: VolumeSpec, service: Service) -> VolumeState:
    _require_path_id(spec.id, volume_id)
    return service.ensure_volume(spec)


@router.get("/v1/volumes/{volume_id}")
def get_volume(volume_id: VolumeId, service: Service) -> VolumeState:
    return service.volume_state(volume_id)


@router.delete("/v1/volumes/{volume_id}", status_code=204)
def delete_volume(volume_id: VolumeId, service: Service) -> Response:
    service.delete_volume(volume_id)
    return Response(status_code=204)


@router.post("/v1/volumes/{volume_id}/rollback")
def rollback_volume(volume_id: VolumeId, rollback: VolumeRollback, service: Service) -> VolumeState:
    return service.rollback_volume(volume_id, rollback)


# --- volume snapshots ---

SnapshotId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]


@router.put("/v1/snapshots/{snapshot_id}")
def put_snapshot(snapshot_id: SnapshotId, spec: SnapshotSpec, service: Service) -> SnapshotState:
    _require_path_id(spec.id, snapshot_id)
    return service.create_snapshot(spec)


@router.get("/v1/snapshots/{snapshot_id}")
def get_snapshot(snapshot_id: SnapshotId, service: Service) -> SnapshotState:
    return service.snapshot_state(snapshot_id)


@router.delete("/v1/snapshots/{snapshot_id}", status_code=204)
def delete_snapshot(snapshot_id: SnapshotId, service: Service) -> Response:
    service.delete_snapshot(snapshot_id)
    return Response(status_code=204)


# --- disk exports: a server's root disk on its way to the controller's image store ---

ExportId = Annotated[str, Path(pattern=SERVER_ID_PATTERN, max_length=64)]


@router.post("/v1/servers/{server_id}/root-export/{export_id}")
def export_root_disk(server_id: ServerId, export_id: ExportId, service: Service) -> DiskExport:
    return service.export_root_disk(server_id, export_id)


@router.get("/v1/exports/{export_id}/file")
def download_export(export_id: ExportId, service: Service) -> FileResponse:
    """For the controller (API token) or, a volume's export, the host fetching it (the export's download token)."""
    return FileResponse(export_file(service.state_dir, export_id), media_type="application/octet-stream")


@router.delete("/v1/exports/{export_id}", status_code=204)
def delete_export(export_id: ExportId, service: Service) -> Response:
    service.delete_export(export_id)
    return Response(status_code=204)

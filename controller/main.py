"""The controller application factory."""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.memtrim import start_idle_trimmer
from controller import bootstrap
from controller.api import (
    admin,
    admin_flavors,
    cbr,
    eips,
    flavors,
    images,
    internal,
    jobs,
    join_tokens,
    keypairs,
    projects,
    security_groups,
    server_actions,
    server_block_devices,
    server_groups,
    server_security_groups,
    server_volumes,
    servers,
    snapshots,
    subnets,
    volume_quotas,
    volumes,
    vpcs,
    zones,
)
from controller.auth.deps import CredentialCache
from controller.config import Settings
from controller.context import AgentClients, ControllerContext
from controller.db import create_schema, make_engine
from controller.errors import ApiError, bad_request_code
from controller.logs import request_id_var
from controller.ratelimit import RateLimiter

log = logging.getLogger(__name__)

ROUTERS = [
    internal,
    admin,
    admin_flavors,
    projects,
    join_tokens,
    jobs,
    flavors,
    keypairs,
    server_groups,
    servers,
    server_actions,
    server_volumes,
    server_block_devices,
    server_security_groups,
    volumes,
    snapshots,
    cbr,
    volume_quotas,
    vpcs,
    subnets,
    security_groups,
    eips,
    images,
    zones,
]


# Request ids: a random per-process prefix and a counter, unique without a uuid4 (a getrandom call) per request.
_RID_PREFIX = os.urandom(8).hex()
_rid_counter = itertools.count(1)


class RequestIdMiddleware:
    """Give every request an id (`X-Request-Id`), in the response and in every log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming[:64] if incoming else f"{_RID_PREFIX}{next(_rid_counter):016x}"
        token = request_id_var.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "Invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers() or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = ApiError(_validation_message(exc), code=bad_request_code(request.url.path), status=400)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = ApiError(
                f"The API {request.method} {request.url.path} does not exist", code="APIGW.0101", status=404
            )
        elif exc.status_code == 405:
            err = ApiError(
                f"Method {request.method} is not allowed on {request.url.path}", code="APIGW.0101", status=405
            )
        else:
            err = ApiError(str(exc.detail), code=f"APIGW.{exc.status_code:04d}", status=exc.status_code)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        err = ApiError(
            f"Internal error (request {request_id_var.get()}); see the controller log",
            code="Ecs.0001",
            status=500,
        )
        return JSONResponse(err.body(), status_code=500)


def build_context(settings: Settings, *, schema_ready: bool = False) -> ControllerContext:
    """`schema_ready`: the database is at the head schema already (the daemon's child process saw to it)."""
    settings.controller_dir.mkdir(parents=True, exist_ok=True)
    settings.image_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    if not schema_ready:
        create_schema(engine)
    token = bootstrap.ensure_join_token(settings)
    bootstrap.ensure_admin_credentials(settings, engine)
    return ControllerContext(
        settings=settings,
        engine=engine,
        credentials=CredentialCache(engine),
        join_token=token,
        agents=AgentClients(token),
        rate_limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
    )


def create_app(
    settings: Settings | None = None, *, run_jobs: bool = True, schema_ready: bool = False
) -> FastAPI:
    settings = settings or Settings()
    ctx = build_context(settings, schema_ready=schema_ready)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from controller.jobs import handlers  # noqa: F401  (registers the job kinds)
        from controller.jobs.worker import JobWorkers
        from controller.reconciler import ReconcilerLoop
        from controller.services.image_store import register_seed_image

        register_seed_image(ctx)
        stop_trimming = start_idle_trimmer()
        # What is alive now (the libraries, the app: ~200k objects) lives as long as the app: frozen, the
        # garbage collector's full passes skip it. Unfrozen, each pass walked it all (~150 ms here), and a
        # 1,000-server listing triggered one every few requests.
        gc.freeze()
        if run_jobs:
            ctx.workers = JobWorkers(
                ctx, settings.job_workers, settings.job_lease_seconds, settings.job_max_attempts
            )
            ctx.workers.start()
        reconciler = None
        if run_jobs and settings.reconcile_seconds > 0:
            reconciler = ReconcilerLoop(ctx, settings.reconcile_seconds)
            reconciler.start()
        try:
            yield
        finally:
            gc.unfreeze()  # what the app leaves as garbage can be collected again
            stop_trimming.set()
            if reconciler is not None:
                reconciler.stop()
            if ctx.workers is not None:
                ctx.workers.stop()
            ctx.engine.dispose()

    app = FastAPI(title="labcloud", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.ctx = ctx
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    for module in ROUTERS:
        # The routes themselves, not `include_router`: FastAPI now keeps an included router as one more level
        # that every request walks twice, which was a third of the cost of a small GET. The routers have no
        # prefix, tags or dependencies of their own to lose.
        app.router.routes.extend(module.router.routes)
    return app

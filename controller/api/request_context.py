"""The controller context behind a request, typed: what `create_app` stored in `app.state.ctx`."""

from __future__ import annotations

from fastapi import Request

from controller.context import ControllerContext


def request_ctx(request: Request) -> ControllerContext:
    ctx: ControllerContext = request.app.state.ctx
    return ctx

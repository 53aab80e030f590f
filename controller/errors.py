"""API errors in Huawei Cloud's shape: `{"error": {"code": "Ecs.0114", "message": "…"}}` with a 4xx status.

Every error a route can raise is an `ApiError`; one handler per app turns it into the wire shape. The codes reuse
Huawei's where they are documented (Ecs.0114 server not found, Ecs.0000 request error) and stay consistent per
service where they are not.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400
    code = "Ecs.0000"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. `Retry-After` on 429)."""
        return {}


class BadRequest(ApiError):
    status = 400
    code = "Ecs.0005"


class Unauthorized(ApiError):
    status = 401
    code = "APIGW.0301"


class Forbidden(ApiError):
    status = 403
    code = "Ecs.0003"


class NotFound(ApiError):
    status = 404
    code = "Ecs.0114"


class Conflict(ApiError):
    status = 409
    code = "Ecs.0104"


class QuotaExceeded(ApiError):
    status = 403
    code = "Ecs.0105"


# Per-service codes for a malformed or invalid request, chosen by the path's service.
_BAD_REQUEST_CODES = {
    "ecs": "Ecs.0005",
    "vpc": "VPC.0002",
    "ims": "IMG.0001",
    "evs": "EVS.2024",
    "jobs": "Ecs.0005",
}


def service_of_path(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if "cloudimages" in parts or (parts[:2] == ["v2", "images"]):
        return "ims"
    if any(p in ("vpcs", "subnets", "security-groups", "security-group-rules", "publicips") for p in parts):
        return "vpc"
    if "cloudvolumes" in parts or "cloudsnapshots" in parts:
        return "evs"
    return "ecs"


def bad_request_code(path: str) -> str:
    return _BAD_REQUEST_CODES[service_of_path(path)]


def not_found_code(path: str) -> str:
    return {"ecs": "Ecs.0114", "vpc": "VPC.0202", "ims": "IMG.0027", "evs": "EVS.2025"}[service_of_path(path)]

"""Every route under /v1/admin, found in the controller's own routers (so a new admin route is covered without
editing this test), refuses a project's credentials with 403 `Ecs.0003` and an unsigned request with 401, and
changes nothing in the database. Path parameters are real ids (the tenant's own project and access key, a
registered host, a flavor, a join token), so the refusal cannot come from a lookup that failed first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import Session, SQLModel

from controller.cli.client import ApiCallError, ApiClient
from controller.main import ROUTERS
from tests.controller.api.test_admin_hosts import client_for
from tests.controller.api.test_projects import admin_call

ADMIN_PREFIX = "/v1/admin"
# Columns a heartbeat rewrites while the test runs; everything else must stay as it was.
VOLATILE = {"host": {"last_heartbeat", "hostname", "url", "vcpus", "memory_mib", "disk_gib", "accelerator"}}
# A body each admin call would accept from an admin, so a 403 cannot be a refused body in disguise.
BODIES = {
    "/v1/admin/hosts/{host_id}/disable": {"reason": "mine"},
    "/v1/admin/projects/{project_id}/quotas": {"quota": {"cores": 999}},
    "/v1/admin/flavors": {"flavor": {"name": "mine.1", "vcpus": 1, "ram": 128}},
    "/v1/admin/projects": {"project": {"name": "mine"}},
    "/v1/admin/projects/{project_id}/credentials": {"credential": {"description": "mine"}},
    "/v1/admin/join-tokens": {"join_token": {"description": "mine"}},
}


def admin_routes() -> list[tuple[str, str]]:
    found = {
        (method, route.path)
        for module in ROUTERS
        for route in module.router.routes
        if route.path.startswith(ADMIN_PREFIX)
        for method in getattr(route, "methods", ())
        if method != "HEAD"
    }
    return sorted(found, key=lambda mp: (mp[1], mp[0]))


ROUTES = admin_routes()


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def snapshot(api: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (a host without what its heartbeats refresh)."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with Session(api.ctx.engine) as session:
        for table in SQLModel.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name not in VOLATILE.get(table.name, set())]
            rows = session.connection().execute(select(*columns)).all()
            tables[table.name] = sorted((tuple(map(repr, r)) for r in rows), key=str)
    return tables


def test_the_admin_api_has_the_routes_the_readme_lists() -> None:
    paths = {path for _, path in ROUTES}
    assert {
        "/v1/admin/hosts",
        "/v1/admin/projects",
        "/v1/admin/projects/{project_id}/quotas",
        "/v1/admin/credentials/{access_key}",
        "/v1/admin/join-tokens/{token_id}",
        "/v1/admin/flavors/{flavor_id}",
    } <= paths


def test_every_admin_route_is_403_for_a_project_and_401_unsigned(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-r")
    token = admin_call(api, "POST", "/v1/admin/join-tokens", {"join_token": {"description": "t"}})
    ids = {
        "project_id": tenant.project_id,  # its own project: still not its to administer
        "access_key": tenant.ak,
        "host_id": agent_host.host_id,
        "flavor_id": "s6.nano.1",
        "token_id": token["join_token"]["id"],
    }
    before = snapshot(api)
    wrong: list[str] = []
    with client_for(api, tenant) as client:
        for method, template in ROUTES:
            path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)
            body = BODIES.get(template) if method in ("POST", "PUT", "PATCH") else None
            try:
                client.request(method, path, body=body)
                wrong.append(f"{method} {template}: a project's credentials were accepted")
            except ApiCallError as exc:
                if (exc.status, exc.code) != (403, "Ecs.0003") or "admin" not in str(exc):
                    wrong.append(f"{method} {template}: {exc.status} {exc.code} {exc}")
            unsigned = httpx.request(method, api.endpoint + path, json=body, timeout=60.0, trust_env=False)
            if unsigned.status_code != 401 or unsigned.json()["error"]["code"] != "APIGW.0301":
                wrong.append(f"{method} {template} unsigned: {unsigned.status_code} {unsigned.text[:200]}")
    assert wrong == []
    assert len(ROUTES) >= 18, ROUTES
    assert snapshot(api) == before
    # And the admin itself still may (the refusals were about who asked, not about the ids).
    with ApiClient(client_for(api).creds) as admin:
        assert agent_host.host_id in {h["id"] for h in admin.get("/v1/admin/hosts")["hosts"]}
        admin.get(f"/v1/admin/projects/{tenant.project_id}/quotas")

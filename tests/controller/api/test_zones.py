"""`GET /v1/{p}/availability-zones` through the official SDK, against real test-driver agents: zones come
from the registered hosts, and a zone is available while one of its hosts is up and enabled."""

from __future__ import annotations

import time
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ListServerAzInfoRequest

from controller.cli.client import ApiClient, Credentials

WAIT_S = 120.0


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {"host_dead_seconds": 5.0}


def zones(api: Any) -> dict[str, str]:
    answer = api.ecs().list_server_az_info(ListServerAzInfoRequest())
    return {z.availability_zone_id: z.mode for z in answer.availability_zones}


def wait_for(api: Any, expected: dict[str, str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while (seen := zones(api)) != expected:
        assert time.monotonic() < deadline, f"zones stayed {seen}, expected {expected}"
        time.sleep(0.2)


def test_no_hosts_no_zones(api) -> None:  # type: ignore[no-untyped-def]
    assert zones(api) == {}


def test_zones_follow_host_state(api, agents) -> None:  # type: ignore[no-untyped-def]
    a = agents.start("a1", availability_zone="lab-1a")
    agents.start("a2", availability_zone="lab-1a")
    b = agents.start("b1", availability_zone="lab-1b")
    assert zones(api) == {"lab-1a": "enable", "lab-1b": "enable"}
    creds = Credentials(endpoint=api.endpoint, ak=api.ak, sk=api.sk, project_id=api.project_id)
    with ApiClient(creds) as admin:
        admin.post(f"/v1/admin/hosts/{b.host_id}/disable", {"reason": "maintenance"})
        # One host of lab-1a still serves, so lab-1a stays available.
        admin.post(f"/v1/admin/hosts/{a.host_id}/disable")
        assert zones(api) == {"lab-1a": "enable", "lab-1b": "disable"}
        admin.post(f"/v1/admin/hosts/{b.host_id}/enable")
    assert zones(api) == {"lab-1a": "enable", "lab-1b": "enable"}
    agents.stop_serving(b)  # silent past host_dead_seconds: down
    wait_for(api, {"lab-1a": "enable", "lab-1b": "disable"})
    agents.serve_again(b)
    wait_for(api, {"lab-1a": "enable", "lab-1b": "enable"})


def test_every_project_sees_the_zones(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-z")
    assert zones(tenant) == {"lab-1a": "enable"}

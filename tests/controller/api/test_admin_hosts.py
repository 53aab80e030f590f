"""The admin host API against a real controller and real test-driver agents: list, disable, enable, and the
scheduler honouring them (a disabled or silent host gets no new servers; "no valid host" leaks nothing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from agent.schemas import HostInfo
from controller.cli.client import ApiCallError, ApiClient, Credentials
from controller.models.network import Port
from tests.controller.api.server_helpers import Net, counts, create_and_wait, make_net, row, server

WAIT_S = 120.0


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


def client_for(api: Any, clients: Any = None) -> ApiClient:
    """A signed client (the CLI's) for the admin API, which the Huawei SDK does not cover."""
    c = clients or api
    return ApiClient(Credentials(endpoint=api.endpoint, ak=c.ak, sk=c.sk, project_id=c.project_id))


def hosts(api: Any) -> dict[str, dict[str, Any]]:
    with client_for(api) as client:
        return {h["id"]: h for h in client.get("/v1/admin/hosts")["hosts"]}


def test_admin_apis_refuse_other_projects(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-a")
    with client_for(api, tenant) as client:
        for call in (
            lambda: client.get("/v1/admin/hosts"),
            lambda: client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable", {"reason": "mine"}),
            lambda: client.post(f"/v1/admin/hosts/{agent_host.host_id}/enable"),
        ):
            with pytest.raises(ApiCallError) as info:
                call()
            assert (info.value.status, info.value.code) == (403, "Ecs.0003")
    assert hosts(api)[agent_host.host_id]["enabled"] is True


def test_disable_and_enable_show_in_the_list(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    host = hosts(api)[agent_host.host_id]
    assert (host["state"], host["enabled"], host["disabled_reason"]) == ("up", True, None)
    with client_for(api) as client:
        answer = client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable", {"reason": "RAM swap"})
        assert answer["host"]["enabled"] is False and answer["host"]["disabled_reason"] == "RAM swap"
        # The reason is optional, and heartbeats do not re-enable a host.
        client.post(f"/v1/admin/hosts/{agent_host.host_id}/enable")
        client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable")
        beat = hosts(api)[agent_host.host_id]["last_heartbeat"]
        deadline = time.monotonic() + WAIT_S
        while hosts(api)[agent_host.host_id]["last_heartbeat"] == beat:
            assert time.monotonic() < deadline, "the agent stopped heartbeating"
            time.sleep(0.2)
        host = hosts(api)[agent_host.host_id]
        assert (host["enabled"], host["disabled_reason"], host["state"]) == (False, None, "up")
        with pytest.raises(ApiCallError) as info:
            client.post("/v1/admin/hosts/no-such-host/disable")
        assert (info.value.status, info.value.code) == (404, "Ecs.0114")
        with pytest.raises(ApiCallError) as info:
            client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable", {"reason": "x" * 256})
        assert info.value.status == 400


def test_disabled_only_host_fails_create_cleanly_then_enable_works(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    with client_for(api) as client:
        client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable", {"reason": "maintenance"})
    (server_id,), job = create_and_wait(ecs, server(net))
    assert job.status == "FAIL" and job.error_code == "Ecs.0209"
    assert "No valid host" in job.fail_reason and f"{agent_host.host_id}: disabled" in job.fail_reason
    failed = row(api, server_id)
    assert (failed.status, failed.host_id, failed.admin_pass) == ("ERROR", None, None)
    with Session(api.ctx.engine) as session:  # nothing leaked: no port, no domain on the host
        assert session.exec(select(Port).where(Port.server_id == server_id)).all() == []
    assert agent_host.service.host_info().servers == []

    with client_for(api) as client:
        client.post(f"/v1/admin/hosts/{agent_host.host_id}/enable")
    (server_id,), job = create_and_wait(ecs, server(net, name="after"))
    assert job.status == "SUCCESS", job.fail_reason
    assert row(api, server_id).host_id == agent_host.host_id
    assert [s.id for s in agent_host.service.host_info().servers] == [server_id]


def register_silent_host(api: Any, host_id: str) -> None:
    """A host that registers once through the real agent endpoint and then never heartbeats again."""
    info = HostInfo(
        host_id=host_id,
        hostname=host_id,
        url="http://127.0.0.1:9",  # nothing listens: the scheduler must never pick it
        accelerator="tcg",
        vcpus=64,
        memory_mib=65536,
        disk_gib=1000,
    )
    response = httpx.post(
        f"{api.endpoint}/internal/hosts",
        json=info.model_dump(),
        headers={"Authorization": f"Bearer {api.ctx.join_token}"},
        timeout=60.0,
        trust_env=False,
    )
    response.raise_for_status()


class TestSilentHost:
    @pytest.fixture
    def api_settings(self, seed_image_file: Path) -> dict[str, Any]:
        # Short, so the test need not wait long; the real agent below heartbeats every second.
        return {"seed_image": seed_image_file, "host_dead_seconds": 3.0}

    def test_a_host_without_heartbeats_is_down_and_skipped(self, api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
        register_silent_host(api, "silent-host")
        deadline = time.monotonic() + WAIT_S
        while hosts(api)["silent-host"]["state"] != "down":
            assert time.monotonic() < deadline, "the silent host never went down"
            time.sleep(0.2)
        assert hosts(api)[agent_host.host_id]["state"] == "up"
        # The silent host has far more free RAM, which the weights prefer: only its state keeps it out.
        ecs = api.ecs()
        (server_id,), job = create_and_wait(ecs, server(net))
        assert job.status == "SUCCESS", job.fail_reason
        assert row(api, server_id).host_id == agent_host.host_id

        with client_for(api) as client:
            client.post(f"/v1/admin/hosts/{agent_host.host_id}/disable")
        before = counts(api)
        (server_id,), job = create_and_wait(ecs, server(net, name="nowhere"))
        assert job.status == "FAIL" and job.error_code == "Ecs.0209"
        assert "silent-host: down" in job.fail_reason and f"{agent_host.host_id}: disabled" in job.fail_reason
        assert counts(api).ports == before.ports
        assert row(api, server_id).host_id is None

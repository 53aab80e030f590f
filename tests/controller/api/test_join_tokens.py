"""Per-host join tokens against a real controller and real test-driver agents: an agent registers with an
admin-issued token (bound to its host from then on), the controller places a server on it (calling the agent
with the agent's own API token, the agent fetching the image with its join token), and a revoked token takes
the host down at once while the shared bootstrap token keeps working."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from agent.schemas import HostInfo
from controller.models.host import Host
from controller.models.project import JoinToken
from tests.controller.api.server_helpers import create_and_wait, make_net, row, server
from tests.controller.api.test_projects import admin_call, expect_api_error


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def issue(api: Any, **fields: Any) -> dict[str, Any]:
    doc = admin_call(api, "POST", "/v1/admin/join-tokens", {"join_token": fields} if fields else None)
    return dict(doc["join_token"])


def tokens(api: Any) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in admin_call(api, "GET", "/v1/admin/join-tokens")["join_tokens"]}


def host_states(api: Any) -> dict[str, str]:
    return {h["id"]: h["state"] for h in admin_call(api, "GET", "/v1/admin/hosts")["hosts"]}


def heartbeat(
    api: Any, token: str, host_id: str, *, url: str = "http://127.0.0.1:9", agent_token: str | None = None
) -> httpx.Response:
    """What an agent sends to register and on every heartbeat, by hand."""
    info = HostInfo(
        host_id=host_id,
        hostname=host_id,
        url=url,
        accelerator="tcg",
        vcpus=2,
        memory_mib=2048,
        disk_gib=10,
        agent_token=agent_token,
    )
    return httpx.post(
        f"{api.endpoint}/internal/hosts",
        json=info.model_dump(mode="json"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60.0,
        trust_env=False,
    )


def row_of_host(api: Any, host_id: str) -> Host:
    with Session(api.ctx.engine) as session:
        host = session.get(Host, host_id)
    assert host is not None
    return host


def refused(response: httpx.Response, words: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "Agent.0401" and words in error["message"], error


def test_an_agent_joins_with_its_own_token_and_is_cut_off_when_it_is_revoked(api, agents) -> None:  # type: ignore[no-untyped-def]
    local = agents.start("local")  # the shared bootstrap token, as `labcloud up` gives its agent
    issued = issue(api, expires_in=3600, description="rack 2")
    assert issued["token"].startswith("lcjt-") and issued["status"] == "unused" and issued["host_id"] is None
    with Session(api.ctx.engine) as session:
        stored = session.get(JoinToken, issued["id"])
        assert stored is not None and issued["token"] not in stored.model_dump_json()  # only its hash

    remote = agents.start("remote", join_token=issued["token"])
    listed = tokens(api)[issued["id"]]
    assert (listed["host_id"], listed["status"], listed["description"]) == (remote.host_id, "bound", "rack 2")
    assert "token" not in listed
    with Session(api.ctx.engine) as session:
        host = session.get(Host, remote.host_id)
        assert host is not None and host.agent_token and host.agent_token != issued["token"]

    # The whole create path works for a host that joined this way: the controller calls the agent, the agent
    # fetches the image with its join token.
    admin_call(api, "POST", f"/v1/admin/hosts/{local.host_id}/disable")
    net = make_net(api)
    (server_id,), job = create_and_wait(api.ecs(), server(net))
    assert job.status == "SUCCESS", job.fail_reason
    assert row(api, server_id).host_id == remote.host_id
    assert remote.service.host_info().servers[0].id == server_id
    # The controller called it with its API token; the agent's API refuses its join token now.
    for token, status in ((issued["token"], 401), (host.agent_token, 200)):
        response = httpx.get(
            f"{remote.url}/v1/host", headers={"Authorization": f"Bearer {token}"}, trust_env=False
        )
        assert response.status_code == status, response.text

    # Bound: no other host may use it.
    refused(heartbeat(api, issued["token"], "host-intruder"), "belongs to another host")
    assert "host-intruder" not in host_states(api)

    assert admin_call(api, "DELETE", f"/v1/admin/join-tokens/{issued['id']}") is None
    assert host_states(api)[remote.host_id] == "down"  # at once, not after missed heartbeats
    assert tokens(api)[issued["id"]]["status"] == "revoked"
    refused(heartbeat(api, issued["token"], remote.host_id), "revoked")
    # Nor can the shared token (which every host started with it holds) speak for it.
    refused(heartbeat(api, api.ctx.join_token, remote.host_id), "its own join token")
    # The agent's own heartbeats (every second) are refused as well: its host stays down.
    silent_since = row_of_host(api, remote.host_id).last_heartbeat
    time.sleep(3 * remote.settings.heartbeat_seconds)
    assert row_of_host(api, remote.host_id).last_heartbeat == silent_since
    assert host_states(api)[remote.host_id] == "down"
    # The shared token still works for the local agent (which proves itself with its API token).
    local_secret = row_of_host(api, local.host_id).agent_token
    again = heartbeat(api, api.ctx.join_token, local.host_id, url=local.url, agent_token=local_secret)
    assert again.status_code == 200, again.text
    assert host_states(api)[local.host_id] == "up"


def test_token_checks(api) -> None:  # type: ignore[no-untyped-def]
    refused(heartbeat(api, "lcjt-nosuch", "host-a"), "unknown or revoked")
    refused(heartbeat(api, "not-a-token", "host-a"), "wrong join token")

    expired = issue(api, expires_in=1)
    with Session(api.ctx.engine) as session:  # let it expire without waiting
        stored = session.get(JoinToken, expired["id"])
        assert stored is not None
        stored.expires_at = stored.created_at
        session.add(stored)
        session.commit()
    refused(heartbeat(api, expired["token"], "host-a"), "expired unused")
    assert tokens(api)[expired["id"]]["status"] == "expired"

    for_b = issue(api, host_id="host-b")  # bound when issued
    refused(heartbeat(api, for_b["token"], "host-a"), "belongs to another host")
    refused(heartbeat(api, api.ctx.join_token, "host-b"), "its own join token")  # not even before it joins
    assert heartbeat(api, for_b["token"], "host-b").status_code == 200
    # An unbound token cannot take over a host that has a token of its own.
    spare = issue(api)
    refused(heartbeat(api, spare["token"], "host-b"), "already has its own join token")
    assert tokens(api)[spare["id"]]["host_id"] is None
    assert set(host_states(api)) == {"host-b"}

    before = len(tokens(api))
    for body in ({"expires_in": 0}, {"host_id": ""}, {"colour": "red"}, {"expires_in": "1"}):
        err = expect_api_error(lambda b=body: issue(api, **b), 400, "Ecs.0005")
        assert str(err)
    expect_api_error(lambda: admin_call(api, "DELETE", "/v1/admin/join-tokens/nosuch"), 404, "Ecs.0114")
    assert len(tokens(api)) == before
    with Session(api.ctx.engine) as session:
        assert len(session.exec(select(JoinToken)).all()) == before

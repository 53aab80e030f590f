"""A registered host id belongs to its agent: with the shared join token, which every host holds, another agent
cannot re-register or heartbeat it (and so take its URL and API token and receive the controller's calls);
its own agent, restarted, proves itself with the API token it keeps; an admin's `labcloud host forget` lets a
reinstalled host register anew. Real controller, real test-driver agents."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlmodel import Session

from agent.api_token import load_or_create
from agent.main import Heartbeat
from controller.cli.client import ApiCallError
from controller.cli.main import main
from controller.models.host import Host
from tests.controller.api.test_admin_hosts import client_for, hosts
from tests.controller.api.test_join_tokens import heartbeat, refused
from tests.support.waiting import wait_for


def record(api: Any, host_id: str) -> tuple[str, str, str | None]:
    """What the controller calls a host with: its URL and the agent's API token (and its name)."""
    with Session(api.ctx.engine) as session:
        host = session.get(Host, host_id)
    assert host is not None
    return host.url, host.hostname, host.agent_token


def last_heartbeat(api: Any, host_id: str) -> Any:
    with Session(api.ctx.engine) as session:
        host = session.get(Host, host_id)
    assert host is not None
    return host.last_heartbeat


def refusals_of(caplog: pytest.LogCaptureFixture, host_id: str, url: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "controller.services.host_identity" and r.args == (host_id, url)
    )


def test_a_host_id_belongs_to_its_agent(api, agents, monkeypatch, capsys, caplog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="controller.services.host_identity")
    real = agents.start("real")
    before = record(api, real.host_id)
    assert before[0] == real.url and before[2]

    # A second agent, started with the shared token on another machine, claims the same host id: its
    # heartbeats (the agent's own heartbeat code, with an API token of its own) are refused.
    intruder_url = "http://127.0.0.1:9"
    intruder = Heartbeat(
        api.endpoint,
        api.ctx.join_token,
        60.0,
        lambda: real.service.host_info().model_copy(update={"url": intruder_url}),
        api_token=load_or_create(tmp_path / "intruder-state"),
    )
    intruder.start()
    try:
        wait_for(
            "the intruder's first heartbeat", lambda: refusals_of(caplog, real.host_id, intruder_url) >= 1
        )
        assert intruder.beat() is False and intruder.beats == 0
    finally:
        intruder.stop()
    assert refusals_of(caplog, real.host_id, intruder_url) == 2
    assert record(api, real.host_id) == before
    # Nor by hand: no secret, the real URL with a guessed secret.
    for url, secret in ((intruder_url, None), (real.url, "guessed")):
        refused(
            heartbeat(api, api.ctx.join_token, real.host_id, url=url, agent_token=secret),
            "registered to another agent",
        )
    assert record(api, real.host_id) == before
    # The real agent's own heartbeats go on being accepted.
    beat = last_heartbeat(api, real.host_id)
    wait_for("a heartbeat of the real agent", lambda: last_heartbeat(api, real.host_id) > beat)

    # The real agent restarts (a new app on the same state directory, reading its API token from it).
    agents.stop_serving(real)
    beat = last_heartbeat(api, real.host_id)
    agents.serve_again(real)
    wait_for("the restarted agent's heartbeat", lambda: last_heartbeat(api, real.host_id) > beat)
    assert record(api, real.host_id) == before
    assert hosts(api)[real.host_id]["state"] == "up"

    # The host is reinstalled: its new agent has another API token. An admin forgets the old one first.
    agents.stop_serving(real)
    monkeypatch.setenv("LABCLOUD_HOME", str(api.ctx.settings.home))
    assert main(["host", "forget", real.host_id]) == 0
    assert "forgotten" in capsys.readouterr().out
    assert record(api, real.host_id) == ("", before[1], None)
    assert hosts(api)[real.host_id]["state"] == "down"  # at once, until an agent registers it
    moved = "http://127.0.0.1:9"
    assert heartbeat(api, api.ctx.join_token, real.host_id, url=moved, agent_token="reinstalled").is_success
    assert record(api, real.host_id) == (moved, real.host_id, "reinstalled")
    # From now on the old agent is the stranger: its heartbeats are refused.
    agents.serve_again(real)
    wait_for("a refused heartbeat of the old agent", lambda: refusals_of(caplog, real.host_id, real.url) >= 1)
    assert record(api, real.host_id) == (moved, real.host_id, "reinstalled")


def test_a_host_without_an_api_token_on_record_keeps_its_url(api) -> None:  # type: ignore[no-untyped-def]
    """Hosts registered by agents that report no API token (older agents) cannot be moved elsewhere either;
    the first API token reported is kept."""
    token, first = api.ctx.join_token, "http://127.0.0.1:9"
    assert heartbeat(api, token, "old-host", url=first).is_success
    response = heartbeat(api, token, "old-host", url="http://127.0.0.1:10")
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "Agent.0409" and "labcloud host forget old-host" in error["message"]
    assert record(api, "old-host") == (first, "old-host", None)

    assert heartbeat(api, token, "old-host", url=first, agent_token="first-secret").is_success
    assert record(api, "old-host") == (first, "old-host", "first-secret")
    refused(heartbeat(api, token, "old-host", url=first, agent_token="other"), "registered to another agent")
    assert record(api, "old-host") == (first, "old-host", "first-secret")

    with client_for(api) as client:
        with pytest.raises(ApiCallError) as info:
            client.post("/v1/admin/hosts/no-such-host/forget")
        assert (info.value.status, info.value.code) == (404, "Ecs.0114")
    with client_for(api, api.new_project("tenant-f")) as client:
        with pytest.raises(ApiCallError) as info:
            client.post("/v1/admin/hosts/old-host/forget")
        assert (info.value.status, info.value.code) == (403, "Ecs.0003")
    assert record(api, "old-host") == (first, "old-host", "first-secret")

"""`__labcloud_auto_restart`: a guest destroyed behind labcloud's back is started again (through a start job) when
its server asks for it, and shows SHUTOFF when it does not; a stop through the API is never undone.

A real controller and a real agent on libvirt's test driver; the guests are destroyed on the agent's own libvirt
connection (the test driver keeps its domains per connection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt
import pytest
from sqlmodel import Session, col, select

from agent.virt.domain_xml import domain_name
from controller.models.host import Host
from controller.models.job import Job
from controller.services.auto_restart import AUTO_RESTART_KEY, wants_auto_restart
from tests.controller.api.server_helpers import create_and_wait, make_net, row, server, wait_job
from tests.e2e import journey
from tests.support.waiting import wait_for


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file, "power_settle_seconds": 0.0}


def domain(agent_host: Any, server_id: str) -> libvirt.virDomain:
    return agent_host.service._host._connection().lookupByName(domain_name(server_id))


def start_jobs(api: Any, server_id: str) -> list[Job]:
    with Session(api.ctx.engine) as session:
        jobs = session.exec(select(Job).where(col(Job.kind) == "startSingleServer")).all()
    return [j for j in jobs if j.payload.get("server_id") == server_id]


def heartbeats(api: Any, host_id: str, n: int) -> None:
    """Wait until `n` more heartbeats of the host have been recorded."""
    for _ in range(n):
        with Session(api.ctx.engine) as session:
            host = session.get(Host, host_id)
            assert host is not None
            seen = host.last_heartbeat

        def newer(seen: Any = seen) -> bool:
            with Session(api.ctx.engine) as session:
                current = session.get(Host, host_id)
                return current is not None and current.last_heartbeat > seen

        wait_for("a heartbeat", newer)


@pytest.mark.parametrize(
    ("meta", "wanted"),
    [
        ({AUTO_RESTART_KEY: "true"}, True),
        ({AUTO_RESTART_KEY: "True "}, True),
        ({AUTO_RESTART_KEY: "no"}, False),
    ],
)
def test_the_setting_is_a_metadata_item(meta: dict[str, str], wanted: bool) -> None:
    assert wants_auto_restart(meta) is wanted
    assert wants_auto_restart({}) is False and wants_auto_restart(None) is False


def test_a_destroyed_guest_restarts_only_when_its_server_asks(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    net = make_net(api)
    (keeper,), job = create_and_wait(ecs, server(net, name="keeper", metadata={AUTO_RESTART_KEY: "true"}))
    assert job.status == "SUCCESS", job.fail_reason
    (plain,), job = create_and_wait(ecs, server(net, name="plain"))
    assert job.status == "SUCCESS", job.fail_reason

    for sid in (keeper, plain):
        domain(agent_host, sid).destroy()  # behind labcloud's back
    wait_for("the plain server SHUTOFF", lambda: row(api, plain).status == "SHUTOFF")
    wait_for("a start job for the keeper", lambda: len(start_jobs(api, keeper)) == 1)
    (restart,) = start_jobs(api, keeper)
    assert restart.request_id and restart.request_id.startswith("auto-restart-")
    assert wait_job(ecs, restart.parent_id).status == "SUCCESS"
    assert (row(api, keeper).status, row(api, keeper).task_state) == ("ACTIVE", None)
    assert domain(agent_host, keeper).isActive()
    assert not domain(agent_host, plain).isActive() and start_jobs(api, plain) == []

    # A stop through the API is what the user wants: heartbeats reporting the guest off do not undo it.
    assert wait_job(ecs, journey.stop(ecs, [keeper])).status == "SUCCESS"
    heartbeats(api, agent_host.host_id, 3)
    assert row(api, keeper).status == "SHUTOFF" and len(start_jobs(api, keeper)) == 1
    assert not domain(agent_host, keeper).isActive()

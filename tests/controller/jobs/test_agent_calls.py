"""Jobs calling an agent that does not answer: while its host still counts as up (an agent being restarted) the
job keeps calling and finishes once the agent is back; once the host is down it fails with a reason, and a
create that could not clean up keeps what the host may still hold (its claim and its address) until deleted.

A real controller and a real agent on libvirt's test driver, taken off the air (no API, no heartbeat) and
served again, through the official SDK.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.db import session_scope
from controller.models.common import utcnow
from controller.models.host import Host
from controller.models.job import RUNNING, Job
from controller.models.network import Port
from controller.services.servers import AGENT_UNREACHABLE
from tests.controller.api.server_helpers import create, create_and_wait, make_net, row, server, wait_job
from tests.e2e import journey
from tests.support.waiting import wait_for


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file, "host_dead_seconds": 60.0}


def ports_of(api: Any, server_id: str) -> int:
    with Session(api.ctx.engine) as session:
        return len(session.exec(select(Port).where(col(Port.server_id) == server_id)).all())


def sub_job_attempted(api: Any, server_id: str, kind: str) -> Callable[[], bool]:
    """True once a worker runs the server's `kind` job (and so calls the silent agent)."""

    def check() -> bool:
        with Session(api.ctx.engine) as session:
            jobs = session.exec(select(Job).where(col(Job.kind) == kind, col(Job.status) == RUNNING)).all()
        return any(j.payload.get("server_id") == server_id for j in jobs)

    return check


def test_a_job_waits_for_a_restarting_agent_and_finishes(api, agents) -> None:  # type: ignore[no-untyped-def]
    host = agents.start()
    ecs = api.ecs()
    net = make_net(api)
    (sid,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS", job.fail_reason

    agents.stop_serving(host)
    stop_job = journey.stop(ecs, [sid])
    wait_for("the stop job to call the agent", sub_job_attempted(api, sid, "stopSingleServer"))
    time.sleep(1.5)  # let it fail to connect at least once more: the job must still be waiting, not failed
    assert journey.show_job(ecs, stop_job).status == "RUNNING"
    agents.serve_again(host)
    assert wait_job(ecs, stop_job).status == "SUCCESS"
    assert row(api, sid).status == "SHUTOFF"

    agents.stop_serving(host)
    delete_job = journey.delete(ecs, [sid])
    wait_for("the delete job to call the agent", sub_job_attempted(api, sid, "deleteSingleServer"))
    agents.serve_again(host)
    assert wait_job(ecs, delete_job).status == "SUCCESS"
    assert host.service.host_info().servers == [] and ports_of(api, sid) == 0


def test_a_create_fails_once_the_host_is_down_and_keeps_what_the_host_may_hold(api, agents) -> None:  # type: ignore[no-untyped-def]
    host = agents.start()
    ecs = api.ecs()
    net = make_net(api)
    agents.stop_serving(host)
    response = create(ecs, server(net))
    (sid,) = response.server_ids
    # Placed on the host: from here on the job calls the silent agent.
    wait_for("the create job to place the server", lambda: row(api, sid).host_id == host.host_id)
    with session_scope(api.ctx.engine) as session:  # as if the silence had lasted past host_dead_seconds
        session.exec(  # type: ignore[call-overload]
            update(Host)
            .where(col(Host.id) == host.host_id)
            .values(last_heartbeat=utcnow() - timedelta(seconds=api.ctx.settings.host_dead_seconds + 60))
        )
    job = wait_job(ecs, response.job_id)
    assert job.status == "FAIL" and job.error_code == AGENT_UNREACHABLE
    assert f"host {host.host_id} is unreachable" in job.fail_reason
    failed = row(api, sid)
    assert failed.status == "ERROR" and failed.fault_code == AGENT_UNREACHABLE
    # The host might have built part of it: the server keeps its claim and its address until deleted.
    assert failed.host_id == host.host_id and ports_of(api, sid) == 1

    agents.serve_again(host)
    assert wait_job(ecs, journey.delete(ecs, [sid])).status == "SUCCESS"
    assert ports_of(api, sid) == 0 and host.service.host_info().servers == []

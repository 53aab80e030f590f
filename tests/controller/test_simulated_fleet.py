"""Simulation mode (`agent.sim`) against a real controller: simulated hosts register and heartbeat over HTTP,
the scheduler places servers on them through the official SDK, each server is a domain in its host's libvirt
test driver, and delete removes it there.

It lives with the controller tests because it needs the `api` fixture (a real controller) from this package.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkecs.v2 import (
    DeleteServersRequest,
    DeleteServersRequestBody,
    ServerId,
    ShowServerRequest,
)
from sqlmodel import Session, select

from agent.sim import SimCapacity, SimulatedFleet
from controller.models.host import Host
from tests.controller.api.server_helpers import create, make_net, server, wait_job

WAIT_S = 120.0
CAPACITY = SimCapacity(vcpus=2, memory_mib=4096, disk_gib=50)


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file, "quota_instances": -1, "quota_cores": -1, "quota_ram_mib": -1}


@pytest.fixture
def fleet(api: Any, tmp_path: Path) -> Iterator[SimulatedFleet]:
    with SimulatedFleet(
        api.endpoint,
        api.ctx.join_token,
        tmp_path / "fleet",
        3,
        capacity=CAPACITY,
        zones=("lab-1a", "lab-1b"),
        heartbeat_seconds=0.5,
    ) as running:
        yield running


def hosts_in_db(api: Any) -> dict[str, Host]:
    with Session(api.ctx.engine) as session:
        return {h.id: h for h in session.exec(select(Host)).all()}


def domains(fleet: SimulatedFleet) -> dict[str, dict[str, str]]:
    """host id -> {server id: power} as each host's libvirt test driver reports it."""
    return {h.host_id: {s.id: s.power for s in h.service.host_info().servers} for h in fleet.hosts}


def test_simulated_hosts_register_with_their_capacity_and_keep_beating(api, fleet) -> None:  # type: ignore[no-untyped-def]
    hosts = hosts_in_db(api)
    assert sorted(hosts) == ["sim-0000", "sim-0001", "sim-0002"]
    for host in hosts.values():
        assert (host.vcpus, host.memory_mib, host.disk_gib) == (2, 4096, 50)
        assert host.url == f"{fleet.url}/hosts/{host.id}"
    assert [hosts[f"sim-000{i}"].availability_zone for i in range(3)] == ["lab-1a", "lab-1b", "lab-1a"]
    first = {h.id: h.last_heartbeat for h in hosts.values()}
    deadline = time.monotonic() + WAIT_S
    while any(h.last_heartbeat <= first[h.id] for h in hosts_in_db(api).values()):
        assert time.monotonic() < deadline, "the simulated hosts stopped heartbeating"
        time.sleep(0.1)
    # The fleet answers as agents do: bearer token required, unknown hosts 404 in the agent's error shape.
    assert httpx.get(f"{fleet.url}/hosts/sim-0000/v1/host").status_code == 401
    missing = httpx.get(f"{fleet.url}/hosts/nope/v1/host")
    assert missing.status_code == 404 and missing.json()["code"] == "Agent.0404"


def test_servers_land_on_simulated_hosts_and_delete_removes_their_domains(api, fleet) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    net = make_net(api)
    # s6.large.2 is 2 vCPUs and 4 GiB: RAM (ratio 1.0) lets each 4 GiB host take exactly one.
    answer = create(ecs, server(net, name="sim", flavor_ref="s6.large.2", count=3))
    assert wait_job(ecs, answer.job_id).status == "SUCCESS"
    placed = {sid: ecs.show_server(ShowServerRequest(server_id=sid)).server for sid in answer.server_ids}
    assert {s.status for s in placed.values()} == {"ACTIVE"}
    by_host = {s.os_ext_srv_att_rhost: sid for sid, s in placed.items()}
    assert sorted(by_host) == ["sim-0000", "sim-0001", "sim-0002"], "one server per host: RAM is full"
    assert domains(fleet) == {host: {sid: "running"} for host, sid in by_host.items()}
    for sid, srv in placed.items():
        home = fleet.host(srv.os_ext_srv_att_rhost).settings.state_dir
        assert (home / "instances" / sid / "root.qcow2").is_file()

    # A fourth does not fit anywhere: the job fails with the scheduler's reason and no domain appears.
    extra = create(ecs, server(net, name="extra", flavor_ref="s6.large.2"))
    failed = wait_job(ecs, extra.job_id)
    assert failed.status == "FAIL"
    assert "No valid host" in failed.fail_reason and "needs 4096 MiB RAM, 0 free" in failed.fail_reason
    assert sum(len(d) for d in domains(fleet).values()) == 3

    body = DeleteServersRequestBody(servers=[ServerId(id=sid) for sid in answer.server_ids])
    deleted = ecs.delete_servers(DeleteServersRequest(body=body))
    assert wait_job(ecs, deleted.job_id).status == "SUCCESS"
    assert domains(fleet) == {h.host_id: {} for h in fleet.hosts}
    for sid, srv in placed.items():
        home = fleet.host(srv.os_ext_srv_att_rhost).settings.state_dir
        assert not (home / "instances" / sid).exists()

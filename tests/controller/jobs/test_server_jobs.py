"""Server jobs and placement on a real database, with real agents on libvirt's test driver where needed.

Concurrent claims never overcommit a host; a create resumed after a crash converges; servers spread over hosts
and honour a requested zone; membership and rule changes reach every agent hosting a member.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ShowServerRequest
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
)
from sqlmodel import Session, select

from controller.config import Settings
from controller.db import session_scope
from controller.jobs.handlers.servers import create_single_server
from controller.jobs.queue import new_job
from controller.jobs.worker import JobContext
from controller.main import build_context
from controller.models.common import utcnow
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.server import Server
from controller.services.servers import claim_host
from controller.state import BUILD
from tests.controller.api.server_helpers import create_and_wait, make_net, row, server

# --- placement claims on a real SQLite database, no agents ---


@pytest.fixture
def ctx(tmp_path: Path):  # type: ignore[no-untyped-def]
    context = build_context(Settings(home=tmp_path / "home", seed_image=None, database_url=None))
    with session_scope(context.engine) as session:
        session.add(Flavor(id="f256", name="f256", vcpus=1, ram_mib=256))
    yield context
    context.engine.dispose()


def _host(host_id: str, memory_mib: int, zone: str = "lab-1a") -> Host:
    return Host(
        id=host_id,
        hostname=host_id,
        url=f"http://{host_id}.invalid",
        accelerator="tcg",
        vcpus=8,
        memory_mib=memory_mib,
        disk_gib=100,
        availability_zone=zone,
        last_heartbeat=utcnow(),
    )


def _building(ctx: Any, count: int, zone: str = "lab-1a") -> list[str]:
    servers = [
        Server(
            project_id="p",
            name=f"s{i}",
            flavor_id="f256",
            image_id="i",
            availability_zone=zone,
            vpc_id="v",
            root_volume_size=1,
            status=BUILD,
            task_state="spawning",
        )
        for i in range(count)
    ]
    with session_scope(ctx.engine) as session:
        session.add_all(servers)
    return [s.id for s in servers]


def test_concurrent_claims_never_overcommit(ctx) -> None:  # type: ignore[no-untyped-def]
    with session_scope(ctx.engine) as session:
        session.add_all([_host("big", 1024), _host("small", 512)])
    server_ids = _building(ctx, 10)
    barrier = threading.Barrier(len(server_ids))
    results: dict[str, Any] = {}

    def claim(sid: str) -> None:
        barrier.wait()
        results[sid] = claim_host(ctx, sid, any_zone=True)

    threads = [threading.Thread(target=claim, args=(sid,)) for sid in server_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    placed = [r.host_id for r in results.values() if r.host_id]
    refused = [r.no_valid_host for r in results.values() if r.no_valid_host]
    assert sorted(placed) == ["big"] * 4 + ["small"] * 2
    assert len(refused) == 4
    assert all("needs 256 MiB RAM, 0 free" in r.message() for r in refused)
    with Session(ctx.engine) as session:
        stored = {s.id: s.host_id for s in session.exec(select(Server)).all()}
    assert {sid: r.host_id for sid, r in results.items()} == stored


def test_a_claim_is_kept(ctx) -> None:  # type: ignore[no-untyped-def]
    with session_scope(ctx.engine) as session:
        session.add(_host("one", 1024))
    (sid,) = _building(ctx, 1)
    assert claim_host(ctx, sid, any_zone=True).host_id == "one"
    with session_scope(ctx.engine) as session:
        session.add(_host("roomier", 8192))
    assert claim_host(ctx, sid, any_zone=True).host_id == "one"


def test_zone_requested_or_taken_from_the_host(ctx) -> None:  # type: ignore[no-untyped-def]
    with session_scope(ctx.engine) as session:
        session.add_all([_host("a", 8192, "lab-1a"), _host("b", 1024, "lab-1b")])
    (pinned,) = _building(ctx, 1, zone="lab-1b")
    assert claim_host(ctx, pinned, any_zone=False).host_id == "b"
    (free,) = _building(ctx, 1, zone="lab-1b")  # the stored zone is only the default when none was asked for
    assert claim_host(ctx, free, any_zone=True).host_id == "a"
    with Session(ctx.engine) as session:
        placed = session.get(Server, free)
        assert placed is not None and placed.availability_zone == "lab-1a"


def test_dead_and_disabled_hosts_are_named_in_the_refusal(ctx) -> None:  # type: ignore[no-untyped-def]
    dead = _host("dead", 8192)
    dead.last_heartbeat = utcnow().replace(year=2020)
    off = _host("off", 8192)
    off.enabled = False
    with session_scope(ctx.engine) as session:
        session.add_all([dead, off])
    (sid,) = _building(ctx, 1)
    claim = claim_host(ctx, sid, any_zone=True)
    assert claim.host_id is None and claim.no_valid_host is not None
    assert claim.no_valid_host.reasons == {"off": "disabled", "dead": claim.no_valid_host.reasons["dead"]}
    assert claim.no_valid_host.reasons["dead"].startswith("down")


# --- with real agents ---


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def test_a_resumed_create_converges(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    net = make_net(api)
    ecs = api.ecs()
    (sid,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS"
    launched = row(api, sid).launched_at

    # Already done: a re-run changes nothing.
    job_row = new_job(api.project_id, "createSingleServer", payload={"server_id": sid})
    assert create_single_server(JobContext(job=job_row, ctx=api.ctx)) == {"server_id": sid}
    assert row(api, sid).launched_at == launched

    # Crashed after the agent call but before the state change: the re-run puts the same spec again and lands.
    with session_scope(api.ctx.engine) as session:
        current = session.get(Server, sid)
        assert current is not None
        current.status, current.task_state = BUILD, "spawning"
        session.add(current)
    assert create_single_server(JobContext(job=job_row, ctx=api.ctx)) == {"server_id": sid}
    assert (row(api, sid).status, row(api, sid).task_state, row(api, sid).host_id) == (
        "ACTIVE",
        None,
        agent_host.host_id,
    )
    assert agent_host.service.server_state(sid).power == "running"
    assert [s.id for s in agent_host.service._specs.all()] == [sid]


def test_servers_spread_over_hosts_and_groups_reach_every_member_host(api, agents) -> None:  # type: ignore[no-untyped-def]
    first, second = agents.start("h1"), agents.start("h2")
    net = make_net(api)
    ecs = api.ecs()
    (a,), job = create_and_wait(ecs, server(net, name="a"))
    assert job.status == "SUCCESS"
    (b,), job = create_and_wait(ecs, server(net, name="b"))
    assert job.status == "SUCCESS"
    assert {row(api, a).host_id, row(api, b).host_id} == {first.host_id, second.host_id}
    by_host = {first.host_id: first, second.host_id: second}
    agent_a, agent_b = by_host[row(api, a).host_id], by_host[row(api, b).host_id]

    def group_on(agent: Any, sid: str) -> Any:
        spec = agent.service._specs.get(sid)
        assert spec is not None
        (group,) = spec.security_groups
        return group

    # b joined the default group after a was built: a's host learnt b's address from the push.
    ips = sorted(
        address.addr
        for sid in (a, b)
        for address in ecs.show_server(ShowServerRequest(server_id=sid)).server.addresses[net.vpc_id]
    )
    assert group_on(agent_a, a).member_ips == ips
    assert group_on(agent_b, b).member_ips == ips

    # A rule change made through the VPC API reaches both hosts.
    group_id = group_on(agent_a, a).id
    rule = CreateSecurityGroupRuleOption(
        security_group_id=group_id,
        direction="ingress",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_ip_prefix="0.0.0.0/0",
    )
    created = (
        api.vpc()
        .create_security_group_rule(
            CreateSecurityGroupRuleRequest(body=CreateSecurityGroupRuleRequestBody(security_group_rule=rule))
        )
        .security_group_rule
    )
    assert created.id in [r.id for r in group_on(agent_a, a).rules]
    assert created.id in [r.id for r in group_on(agent_b, b).rules]


def test_a_requested_zone_places_there(api, agents) -> None:  # type: ignore[no-untyped-def]
    agents.start("east", availability_zone="lab-1a")
    west = agents.start("west", availability_zone="lab-1b")
    net = make_net(api)
    ecs = api.ecs()
    (sid,), job = create_and_wait(ecs, server(net, availability_zone="lab-1b"))
    assert job.status == "SUCCESS"
    assert (row(api, sid).host_id, row(api, sid).availability_zone) == (west.host_id, "lab-1b")

"""Self-healing security groups: a host that missed a membership push gets the group again from the reconciler.

Two real agents (libvirt's test driver, null network) in zones lab-1a and lab-1b. Servers use the project's
default group, whose ingress rule names the group itself, so every member's address is in every host's copy.
The oracle is the agent's stored spec (what it applies to its ipsets and chains).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import DeleteServersRequest, DeleteServersRequestBody, ServerId
from sqlmodel import Session, select

from agent.schemas import RuleSpec, SecurityGroupSpec
from controller.models.network import Port
from controller.reconciler import run_once
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job
from tests.controller.conftest import AgentFactory, AgentHost


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def test_digest_ignores_order() -> None:
    rules = [RuleSpec(id="r1", direction="ingress", protocol="tcp"), RuleSpec(id="r2", direction="egress")]
    a = SecurityGroupSpec(id="g", rules=rules, member_ips=["10.0.0.2", "10.0.0.1"])
    b = SecurityGroupSpec(id="g", rules=rules[::-1], member_ips=["10.0.0.1", "10.0.0.2"])
    assert a.digest() == b.digest()
    assert a.digest() != SecurityGroupSpec(id="g", rules=rules, member_ips=["10.0.0.1"]).digest()
    assert a.digest() != SecurityGroupSpec(id="g", rules=rules[:1], member_ips=a.member_ips).digest()


def _members_on(host: AgentHost, server_id: str) -> dict[str, list[str]]:
    """Group id -> member IPs, as the host's stored spec of `server_id` holds them."""
    spec = host.service._specs.get(server_id)
    assert spec is not None
    return {group.id: group.member_ips for group in spec.security_groups}


def _ip(api: Any, server_id: str) -> str:
    with Session(api.ctx.engine) as session:
        return str(session.exec(select(Port.ip_address).where(Port.server_id == server_id)).one())


def test_a_host_that_missed_a_membership_change_is_repaired_by_the_reconciler(
    api: Any, agents: AgentFactory
) -> None:
    h1 = agents.start("h1", availability_zone="lab-1a")
    agents.start("h2", availability_zone="lab-1b")
    ecs = api.ecs()
    net = make_net(api)
    (a,), job = create_and_wait(ecs, server(net, name="a", availability_zone="lab-1a"))
    assert job.status == "SUCCESS", job
    (group,) = _members_on(h1, a)
    assert _members_on(h1, a) == {group: [_ip(api, a)]}
    assert run_once(api.ctx).groups_repaired == []

    # h1 is off the air while b joins the group on h2: its copy of the group misses b.
    agents.stop_serving(h1)
    (b,), job = create_and_wait(ecs, server(net, name="b", availability_zone="lab-1b"))
    assert job.status == "SUCCESS", job
    agents.serve_again(h1)
    assert _members_on(h1, a) == {group: [_ip(api, a)]}
    assert run_once(api.ctx).groups_repaired == [f"{h1.host_id}/{group}"]
    assert sorted(_members_on(h1, a)[group]) == sorted([_ip(api, a), _ip(api, b)])
    assert run_once(api.ctx).groups_repaired == []  # converged: nothing pushed

    # ... and while b leaves (deleted): h1 keeps admitting b's address until the reconciler sees it back.
    b_ip = _ip(api, b)
    agents.stop_serving(h1)
    body = DeleteServersRequestBody(servers=[ServerId(id=b)], delete_volume=True)
    done = wait_job(ecs, str(ecs.delete_servers(DeleteServersRequest(body=body)).job_id))
    assert done.status == "SUCCESS", done
    agents.serve_again(h1)
    assert b_ip in _members_on(h1, a)[group]
    assert run_once(api.ctx).groups_repaired == [f"{h1.host_id}/{group}"]
    assert _members_on(h1, a) == {group: [_ip(api, a)]}
    assert run_once(api.ctx).groups_repaired == []

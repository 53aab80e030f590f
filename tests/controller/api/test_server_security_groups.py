"""Changing a running server's security groups through the official ECS SDK (Nova's addSecurityGroup /
removeSecurityGroup and os-security-groups), with a real controller and a real agent on libvirt's test driver:
the agent's stored spec is the oracle for what its host enforces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    NovaAddSecurityGroupOption,
    NovaAssociateSecurityGroupRequest,
    NovaAssociateSecurityGroupRequestBody,
    NovaDisassociateSecurityGroupRequest,
    NovaDisassociateSecurityGroupRequestBody,
    NovaListServerSecurityGroupsRequest,
    NovaRemoveSecurityGroupOption,
)
from huaweicloudsdkvpc.v2 import DeleteSecurityGroupRequest, ListSecurityGroupsRequest
from sqlmodel import Session, select

from controller.models.network import Port, SecurityGroup
from tests.controller.api.helpers import create_security_group, expect_error
from tests.controller.api.server_helpers import create_and_wait, make_net, row, server

pytestmark = pytest.mark.filterwarnings("ignore:Method 'nova_:DeprecationWarning")  # the SDK's Nova calls


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def _add(ecs: Any, sid: str, name: str) -> Any:
    body = NovaAssociateSecurityGroupRequestBody(add_security_group=NovaAddSecurityGroupOption(name=name))
    return ecs.nova_associate_security_group(NovaAssociateSecurityGroupRequest(server_id=sid, body=body))


def _remove(ecs: Any, sid: str, name: str) -> Any:
    body = NovaDisassociateSecurityGroupRequestBody(
        remove_security_group=NovaRemoveSecurityGroupOption(name=name)
    )
    return ecs.nova_disassociate_security_group(
        NovaDisassociateSecurityGroupRequest(server_id=sid, body=body)
    )


def _listed(ecs: Any, sid: str) -> list[str]:
    groups = ecs.nova_list_server_security_groups(NovaListServerSecurityGroupsRequest(server_id=sid))
    return sorted(g.name for g in groups.security_groups)


def _enforced(agent_host: Any, sid: str) -> tuple[list[str], list[str]]:
    """(groups of the server's port, groups whose rules the host holds) in the agent's stored spec."""
    spec = agent_host.service._specs.get(sid)
    return sorted(spec.ports[0].security_group_ids), sorted(g.id for g in spec.security_groups)


def _port_groups(api: Any, sid: str) -> list[str]:
    with Session(api.ctx.engine) as session:
        port = session.exec(select(Port).where(Port.server_id == sid)).one()
        return sorted(port.security_group_ids)


def test_groups_of_a_running_server_change_on_its_host(api: Any, agent_host: Any) -> None:
    ecs, vpc = api.ecs(), api.vpc()
    net = make_net(api)
    default = vpc.list_security_groups(ListSecurityGroupsRequest()).security_groups[0]
    web = create_security_group(vpc, "web")
    (sid,), _ = create_and_wait(ecs, server(net))
    assert _listed(ecs, sid) == ["default"]

    _add(ecs, sid, "web")  # Nova passes a name ...
    both = sorted([default.id, web.id])
    assert _listed(ecs, sid) == ["default", "web"]
    assert sorted(row(api, sid).security_group_ids) == both == _port_groups(api, sid)
    assert _enforced(agent_host, sid) == (both, both)
    assert agent_host.service.server_state(sid).power == "running"

    # A group in use cannot be deleted (409 in Huawei's shape), and nothing changes.
    expect_error(
        lambda: vpc.delete_security_group(DeleteSecurityGroupRequest(security_group_id=web.id)),
        409,
        "VPC.0604",
    )
    with Session(api.ctx.engine) as session:
        assert session.get(SecurityGroup, web.id) is not None

    _remove(ecs, sid, default.id)  # ... or an id
    assert _listed(ecs, sid) == ["web"]
    assert _enforced(agent_host, sid) == ([web.id], [web.id])
    assert _port_groups(api, sid) == [web.id]


def test_bad_changes_are_refused_and_change_nothing(api: Any, agent_host: Any, agents: Any) -> None:
    ecs, vpc = api.ecs(), api.vpc()
    net = make_net(api)
    web = create_security_group(vpc, "web")
    create_security_group(vpc, "twin")
    (sid,), _ = create_and_wait(ecs, server(net))
    before = (_port_groups(api, sid), _enforced(agent_host, sid))

    err = expect_error(lambda: _add(ecs, sid, "no-such-group"), 404, "VPC.0602")
    assert "no-such-group" in err.error_msg
    err = expect_error(lambda: _add(ecs, sid, "default"), 400, "Ecs.0005")
    assert "already associated" in err.error_msg
    err = expect_error(lambda: _remove(ecs, sid, "web"), 400, "Ecs.0005")
    assert "not associated" in err.error_msg
    err = expect_error(lambda: _remove(ecs, sid, "default"), 400, "Ecs.0005")
    assert "at least one" in err.error_msg
    expect_error(lambda: _add(ecs, "0" * 8 + "-0000-4000-8000-" + "0" * 12, "web"), 404, "Ecs.0114")
    assert (_port_groups(api, sid), _enforced(agent_host, sid)) == before

    # The host cannot be told: the change is undone and the caller hears so.
    agents.stop_serving(agent_host)
    try:
        err = expect_error(lambda: _add(ecs, sid, web.id), 409, "Ecs.0104")
        assert "nothing was changed" in err.error_msg
        assert _port_groups(api, sid) == before[0]
    finally:
        agents.serve_again(agent_host)
    _add(ecs, sid, web.id)
    assert web.id in _enforced(agent_host, sid)[0]

"""Subnet and VPC updates pushed to the agents hosting the VPC (`network_push`), through the official SDK against a
real controller with real agent apps (libvirt test driver, null network): the agents' stored specs are the oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkvpc.v2 import (
    DeleteSubnetRequest,
    UpdateSubnetOption,
    UpdateSubnetRequest,
    UpdateSubnetRequestBody,
    UpdateVpcOption,
    UpdateVpcRequest,
    UpdateVpcRequestBody,
)

from agent.schemas import ServerSpec, SubnetSpec
from controller.services import network_push
from tests.controller.api.helpers import create_subnet
from tests.controller.api.server_helpers import create_and_wait, make_net, server


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def _stored(host: Any, server_id: str) -> ServerSpec:
    return ServerSpec.model_validate_json(
        (host.settings.state_dir / "specs" / f"{server_id}.json").read_text()
    )


def _subnets(host: Any, server_id: str, vpc_id: str) -> list[SubnetSpec]:
    (network,) = [n for n in _stored(host, server_id).networks if n.vpc_id == vpc_id]
    return network.subnets


def _update_subnet(api: Any, vpc_id: str, subnet_id: str, **fields: Any) -> None:
    body = UpdateSubnetRequestBody(subnet=UpdateSubnetOption(name="subnet-a", **fields))
    api.vpc().update_subnet(UpdateSubnetRequest(vpc_id=vpc_id, subnet_id=subnet_id, body=body))


def test_subnet_and_vpc_changes_reach_the_hosts_of_the_vpc(api: Any, agents: Any) -> None:
    host = agents.start("h1")
    net = make_net(api)
    (server_id,), job = create_and_wait(api.ecs(), server(net))
    assert job.status == "SUCCESS"
    (subnet,) = _subnets(host, server_id, net.vpc_id)
    assert (subnet.dns, subnet.dhcp_enable) == ([], True)

    _update_subnet(api, net.vpc_id, net.subnet_id, dns_list=["10.20.0.53", "10.20.0.54"], dhcp_enable=False)
    (subnet,) = _subnets(host, server_id, net.vpc_id)
    assert (subnet.dns, subnet.dhcp_enable) == (["10.20.0.53", "10.20.0.54"], False)

    # A second subnet comes with the next push; deleting it (no ports) takes it off the host again.
    extra = create_subnet(api.vpc(), net.vpc_id, name="subnet-b", cidr="10.20.2.0/24", gateway_ip="10.20.2.1")
    assert network_push.push_network(api.ctx, net.vpc_id) == [host.host_id]
    assert [s.id for s in _subnets(host, server_id, net.vpc_id)] == [net.subnet_id, extra.id]
    api.vpc().delete_subnet(DeleteSubnetRequest(vpc_id=net.vpc_id, subnet_id=extra.id))
    assert [s.id for s in _subnets(host, server_id, net.vpc_id)] == [net.subnet_id]

    # A wider VPC CIDR is routed by the host.
    body = UpdateVpcRequestBody(vpc=UpdateVpcOption(name="vpc-a", cidr="10.20.0.0/15"))
    api.vpc().update_vpc(UpdateVpcRequest(vpc_id=net.vpc_id, body=body))
    (network,) = _stored(host, server_id).networks
    assert network.cidr == "10.20.0.0/15"


def test_a_host_that_misses_the_push_does_not_fail_the_update(api: Any, agents: Any) -> None:
    host = agents.start("h1")
    net = make_net(api)
    (server_id,), _ = create_and_wait(api.ecs(), server(net))
    other = make_net(api, cidr="10.30.0.0/16", subnet_cidr="10.30.1.0/24", gateway="10.30.1.1")
    assert network_push.push_network(api.ctx, other.vpc_id) == []  # no server there: nobody to tell

    agents.stop_serving(host)
    try:
        _update_subnet(api, net.vpc_id, net.subnet_id, dns_list=["10.20.0.99"])  # answered all the same
        assert network_push.push_network(api.ctx, net.vpc_id) == []
    finally:
        agents.serve_again(host)
    assert _subnets(host, server_id, net.vpc_id)[0].dns == []  # it missed it ...
    assert network_push.push_network(api.ctx, net.vpc_id) == [host.host_id]
    assert _subnets(host, server_id, net.vpc_id)[0].dns == ["10.20.0.99"]  # ... and takes the next one

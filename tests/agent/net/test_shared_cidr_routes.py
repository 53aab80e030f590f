"""Two VPCs with the same CIDR on one host: the host routes into the first; when that one's network goes, a
running agent hands the route to the second at its next ensure (the housekeeping's at the latest), so the host
reaches the second VPC's guests again. Real namespaces and packets: the second VPC's guest listens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.net import names
from agent.net.network import HostNetwork
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec
from controller.cli.guest_route import route_device

from .helpers import Sandbox, tcp_probe

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (udhcpc) from apt"),
]

FIRST = "1c1b2c3d-0000-4000-8000-000000000071"
SECOND = "2c1b2c3d-0000-4000-8000-000000000072"
OPEN = "0e000000-0000-4000-8000-000000000071"
IP = "10.62.1.10"
APP_PORT = 2262


def _spec(vpc_id: str, vni: int) -> NetworkSpec:
    subnet = SubnetSpec(id=f"5b{vpc_id[2:]}", cidr="10.62.1.0/24", gateway_ip="10.62.1.1")
    return NetworkSpec(vpc_id=vpc_id, vni=vni, cidr="10.62.0.0/16", subnets=[subnet])


def _port(vpc_id: str) -> PortSpec:
    return PortSpec(
        id=f"7{vpc_id[0]}{vpc_id[2:]}",
        mac="fa:16:3e:00:62:0" + vpc_id[0],
        ip=IP,
        subnet_id=f"5b{vpc_id[2:]}",
        vpc_id=vpc_id,
        security_group_ids=[OPEN],
    )


def _group() -> SecurityGroupSpec:
    rules = [RuleSpec(id="in-any", direction="ingress"), RuleSpec(id="out-any", direction="egress")]
    return SecurityGroupSpec(id=OPEN, rules=rules, member_ips=[IP])


def _first_goes_in_one_agent(state_dir: Path, second: BoundPort) -> tuple[str | None, str | None]:
    """In one long-lived HostNetwork, as in a running agent: the route's device before and after the first
    VPC's network is deleted and the second is ensured again (what the housekeeping does every 30 s)."""
    net = HostNetwork(state_dir)
    net.ensure_network(_spec(FIRST, 171))
    net.ensure_network(_spec(SECOND, 172))
    before = route_device(IP)
    net.delete_network(FIRST)
    net.sync_ports([second], [_group()])
    net.ensure_network(_spec(SECOND, 172))
    return before, route_device(IP)


def test_the_host_route_passes_to_the_other_vpc_when_the_first_goes(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec(FIRST, 171))
    sandbox.net("ensure_network", _spec(SECOND, 172))
    first, second = sandbox.add_guest(_port(FIRST)), sandbox.add_guest(_port(SECOND))
    bound = [BoundPort(port=g.port, tap=g.tap, hostname=f"vm{i}") for i, g in enumerate((first, second), 1)]
    sandbox.net("sync_ports", bound, [_group()])
    for guest in (first, second):
        lease = sandbox.dhcp(guest)
        assert lease is not None and lease["ip"] == IP
    sandbox.listen(second.ns, APP_PORT)
    assert sandbox.probe(sandbox.host, IP, APP_PORT) == "refused"  # the first VPC's guest: no listener

    before, after = sandbox.call(sandbox.host, _first_goes_in_one_agent, sandbox.state_dir, bound[1])
    assert before == names.host_uplink_name(FIRST)
    assert after == names.host_uplink_name(SECOND)
    assert sandbox.call(sandbox.host, tcp_probe, IP, APP_PORT, 3.0) == "ok"  # the second VPC's guest

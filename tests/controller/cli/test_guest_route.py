"""`labcloud ssh` on a host with two VPCs of the same CIDR: the host's own route leads into the first VPC only, so
a guest of the second is reached through its VPC's router namespace. Real namespaces and packets: two guests
(namespaces plugged into the VPC bridges) with the very same address, only the second one listening."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.net import names
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec
from controller.cli.guest_route import route_device, router_netns_for
from tests.agent.net.conftest import sandbox  # noqa: F401  (the fixture)
from tests.agent.net.helpers import Sandbox

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (udhcpc) from apt"),
]

FIRST = "1a1b2c3d-0000-4000-8000-000000000061"
SECOND = "2a1b2c3d-0000-4000-8000-000000000062"
OPEN = "0e000000-0000-4000-8000-000000000061"
IP = "10.61.1.10"
APP_PORT = 2261


def _spec(vpc_id: str, vni: int) -> NetworkSpec:
    subnet = SubnetSpec(id=f"5b{vpc_id[2:]}", cidr="10.61.1.0/24", gateway_ip="10.61.1.1")
    return NetworkSpec(vpc_id=vpc_id, vni=vni, cidr="10.61.0.0/16", subnets=[subnet])


def _port(vpc_id: str, n: int) -> PortSpec:
    return PortSpec(
        id=f"7e00000{n}-0000-4000-8000-00000000006{n}",
        mac=f"fa:16:3e:00:61:0{n}",
        ip=IP,
        subnet_id=f"5b{vpc_id[2:]}",
        vpc_id=vpc_id,
        security_group_ids=[OPEN],
    )


def _connect_from(netns_path: str | None, ip: str) -> str:
    """One TCP connect to ip:APP_PORT from the host namespace or from `netns_path`: ok, refused or timeout."""
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({ip!r}, {APP_PORT}), timeout=3).close(); print('ok')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError: print('timeout')\n"
    )
    argv = ["python3", "-c", code]
    if netns_path is not None:
        argv = ["nsenter", f"--net={netns_path}", *argv]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def test_a_guest_of_the_second_vpc_with_a_shared_cidr_is_reached_through_its_router(
    sandbox: Sandbox,  # noqa: F811
) -> None:
    sandbox.net("ensure_network", _spec(FIRST, 161))
    sandbox.net("ensure_network", _spec(SECOND, 162))
    first, second = sandbox.add_guest(_port(FIRST, 1)), sandbox.add_guest(_port(SECOND, 2))
    group = SecurityGroupSpec(
        id=OPEN,
        rules=[RuleSpec(id="in-any", direction="ingress"), RuleSpec(id="out-any", direction="egress")],
        member_ips=[IP],
    )
    ports = [BoundPort(port=g.port, tap=g.tap, hostname=f"vm{i}") for i, g in enumerate((first, second), 1)]
    sandbox.net("sync_ports", ports, [group])
    for guest in (first, second):
        lease = sandbox.dhcp(guest)
        assert lease is not None and lease["ip"] == IP
    sandbox.listen(second.ns, APP_PORT)  # only the second VPC's guest listens

    # The host's route belongs to the first VPC: a plain connect reaches the first guest, which refuses.
    assert sandbox.call(sandbox.host, route_device, IP) == names.host_uplink_name(FIRST)
    assert sandbox.call(sandbox.host, _connect_from, None, IP) == "refused"

    state = sandbox.state_dir
    assert sandbox.call(sandbox.host, router_netns_for, state, FIRST, IP) is None  # the plain route is right
    via = sandbox.call(sandbox.host, router_netns_for, state, SECOND, IP)
    assert via == f"/proc/{sandbox.record(SECOND)['router']['pid']}/ns/net"
    assert _connect_from(via, IP) == "ok"  # the second VPC's guest, the one `labcloud ssh` meant

    # No router of that VPC here (the guest runs on another host), or an id that names nothing: plain route.
    assert (
        sandbox.call(sandbox.host, router_netns_for, state, "0a1b2c3d-0000-4000-8000-000000000069", IP)
        is None
    )
    assert sandbox.call(sandbox.host, router_netns_for, state, "", IP) is None

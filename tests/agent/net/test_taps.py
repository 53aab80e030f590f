"""`taps.reattach` puts a running guest's tap back on its VPC bridge, but leaves alone a tap that is still down
off its bridge: that is libvirt plugging a domain it is starting (it creates the tap down, enslaves it, then sets
it up), and enslaving it first made that start fail with EBUSY when two creates on one host overlapped.

Real kernel taps (`ip tuntap`) in a sandbox namespace; oracle: `ip -j link` (master, state).
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.net import names, taps
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, SubnetSpec

from .helpers import Sandbox

pytestmark = pytest.mark.netns

VPC = "0a1b2c3d-0000-4000-8000-000000000021"
SUB = "5b000000-0000-4000-8000-000000000021"


def _port(n: int) -> PortSpec:
    return PortSpec(
        id=f"7e00000{n}-0000-4000-8000-00000000002{n}",
        mac=f"fa:16:3e:00:02:0{n}",
        ip=f"10.22.1.{10 + n}",
        subnet_id=SUB,
        vpc_id=VPC,
        security_group_ids=[],
    )


def _bound(n: int) -> BoundPort:
    port = _port(n)
    return BoundPort(port=port, tap=names.tap_name(port.id), hostname=f"g{n}")


def _links(box: Sandbox) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in box.ip_json(box.host, "link")}


def test_an_up_tap_off_its_bridge_is_put_back_and_a_down_one_being_plugged_is_left_alone(
    sandbox: Sandbox,
) -> None:
    subnet = SubnetSpec(id=SUB, cidr="10.22.1.0/24", gateway_ip="10.22.1.1")
    sandbox.net("ensure_network", NetworkSpec(vpc_id=VPC, vni=102, cidr="10.22.0.0/16", subnets=[subnet]))
    cut_off, plugging, placed, absent = (_bound(n) for n in (1, 2, 3, 4))  # absent: a guest that is off
    bridge = names.bridge_name(VPC)
    for bp in (cut_off, plugging, placed):
        sandbox.sh(sandbox.host, "ip", "tuntap", "add", "dev", bp.tap, "mode", "tap")
    sandbox.sh(sandbox.host, "ip", "link", "set", cut_off.tap, "up")  # a guest's tap whose bridge was rebuilt
    sandbox.sh(sandbox.host, "ip", "link", "set", placed.tap, "master", bridge, "up")

    moved = sandbox.call(sandbox.host, taps.reattach, [cut_off, plugging, placed, absent])

    assert moved == [cut_off.tap]
    links = _links(sandbox)
    assert links[cut_off.tap].get("master") == bridge
    assert links[placed.tap].get("master") == bridge
    assert links[plugging.tap].get("master") is None and "UP" not in links[plugging.tap]["flags"]
    # libvirt's next steps for the tap it is plugging still work: enslave, then up
    sandbox.sh(sandbox.host, "ip", "link", "set", plugging.tap, "master", bridge)
    sandbox.sh(sandbox.host, "ip", "link", "set", plugging.tap, "up")
    assert _links(sandbox)[plugging.tap].get("master") == bridge
    assert absent.tap not in _links(sandbox)

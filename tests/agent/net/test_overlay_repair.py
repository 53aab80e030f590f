"""The overlay repairs itself on a host: a VXLAN flood entry or device removed behind the agent's back comes back
at the next `ensure_network` (what the housekeeping runs every 30 s), and the view the host reports in its
heartbeats (`overlay_views`) is the one it applies.

One simulated host (a namespace with an underlay address), one `HostNetwork` kept across the steps like a
running agent keeps it, so the fast path that skips an intact network is what is exercised. Oracle: `bridge -j fdb`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.net import names
from agent.net.network import HostNetwork
from agent.schemas import NetworkSpec, OverlaySpec, RemotePort, SubnetSpec

from .helpers import FLOOD_MAC, Sandbox, flood_list, underlay_sandbox

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables"),
]

VPC = "0c1d2e3f-0000-4000-8000-00000000000c"
SUBNET = "5c000000-0000-4000-8000-00000000000c"
LOCAL, PEER_1, PEER_2 = "10.254.0.11", "10.254.0.12", "10.254.0.13"
ZEROS = FLOOD_MAC


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    with underlay_sandbox(Path("/tmp") / f"lctest-ovr-{tmp_path.name}", LOCAL) as sandbox:
        yield sandbox


def _scenario(state_dir: Path) -> dict[str, Any]:
    """Runs inside the host namespace, with one HostNetwork for every step (a running agent)."""
    view = OverlaySpec(
        version=5, peers=[PEER_2, PEER_1], remote_ports=[RemotePort(ip="10.30.1.20", mac="fa:16:3e:00:00:20")]
    )
    spec = NetworkSpec(
        vpc_id=VPC,
        vni=4242,
        cidr="10.30.0.0/16",
        subnets=[SubnetSpec(id=SUBNET, cidr="10.30.1.0/24", gateway_ip="10.30.1.1")],
        overlay=view,
    )
    device = names.vxlan_name(VPC)
    net = HostNetwork(state_dir, underlay_ip=LOCAL)
    seen: dict[str, Any] = {}
    net.ensure_network(spec)
    seen["plumbed"] = flood_list(device)
    seen["reported"] = {vpc: v.digest() for vpc, v in net.overlay_views().items()}
    subprocess.run(["bridge", "fdb", "del", ZEROS, "dev", device, "dst", PEER_1], check=True)
    subprocess.run(["bridge", "fdb", "append", ZEROS, "dev", device, "dst", "10.254.0.99"], check=True)
    seen["tampered"] = flood_list(device)
    net.ensure_network(spec)
    seen["after_fdb_repair"] = flood_list(device)
    subprocess.run(["ip", "link", "del", device], check=True)
    net.ensure_network(spec)
    seen["after_device_repair"] = flood_list(device)
    return seen


def test_a_flood_list_changed_or_a_vxlan_port_deleted_behind_our_back_is_repaired(box: Sandbox) -> None:
    seen = box.call(box.host, _scenario, box.state_dir)
    assert seen["plumbed"] == {PEER_1, PEER_2}
    assert seen["reported"] == {
        VPC: OverlaySpec(
            peers=[PEER_1, PEER_2], remote_ports=[RemotePort(ip="10.30.1.20", mac="fa:16:3e:00:00:20")]
        ).digest()
    }
    assert seen["tampered"] == {PEER_2, "10.254.0.99"}
    assert seen["after_fdb_repair"] == {PEER_1, PEER_2}
    assert seen["after_device_repair"] == {PEER_1, PEER_2}
    # The rebuilt device is a port of the VPC bridge again, with the VPC's VNI.
    link = box.ip_json(box.host, "-d", "link", "show", names.vxlan_name(VPC))[0]
    assert link["linkinfo"]["info_data"]["id"] == 4242 and link["master"] == names.bridge_name(VPC)
    assert HostNetwork(box.state_dir, underlay_ip=LOCAL).overlay_views()[VPC].version == 5


def test_a_host_without_an_underlay_reports_no_overlay_views(tmp_path: Path) -> None:
    assert HostNetwork(tmp_path, underlay_ip=None).overlay_views() == {}

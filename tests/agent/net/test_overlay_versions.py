"""An overlay view that differs from the plumbed one only in its version (every server create's spec and every
overlay push carries a new one) re-plumbs nothing, yet the host records the newer version, so a stale push that
arrives afterwards is still ignored; a view with other peers is plumbed as before.

One simulated host (a namespace with an underlay address) and one `HostNetwork` kept across the steps like a
running agent keeps it. Oracles: `bridge -j fdb` for the flood list, the stored record for the version, and a
count of the full plumbing passes (a spy around the real `_plumb`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.net import names
from agent.net.network import HostNetwork
from agent.schemas import NetworkSpec, OverlaySpec, SubnetSpec

from .helpers import Sandbox, flood_list, underlay_sandbox

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables"),
]

VPC = "0c1d2e3f-0000-4000-8000-00000000001d"
SUBNET = "5c000000-0000-4000-8000-00000000001d"
LOCAL, PEER_1, PEER_2 = "10.254.0.21", "10.254.0.22", "10.254.0.23"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Sandbox]:
    with underlay_sandbox(Path("/tmp") / f"lctest-ovv-{tmp_path.name}", LOCAL) as sandbox:
        yield sandbox


def _scenario(state_dir: Path) -> dict[str, Any]:
    """Runs inside the host namespace."""
    spec = NetworkSpec(
        vpc_id=VPC,
        vni=4343,
        cidr="10.31.0.0/16",
        subnets=[SubnetSpec(id=SUBNET, cidr="10.31.1.0/24", gateway_ip="10.31.1.1")],
        overlay=OverlaySpec(version=5, peers=[PEER_1, PEER_2]),
    )
    net = HostNetwork(state_dir, underlay_ip=LOCAL)
    plumbed = 0
    real_plumb = net._plumb

    def counting_plumb(*args: Any) -> None:
        nonlocal plumbed
        plumbed += 1
        real_plumb(*args)

    net._plumb = counting_plumb  # type: ignore[method-assign]
    device = names.vxlan_name(VPC)

    def record_version() -> int:
        data = json.loads((state_dir / "net" / VPC / "network.json").read_text())
        return int(data["spec"]["overlay"]["version"])

    seen: dict[str, Any] = {}
    net.ensure_network(spec)
    seen["first"] = (plumbed, flood_list(device), record_version())
    # a create's spec: the same peers under a newer version
    net.ensure_network(spec.model_copy(update={"overlay": OverlaySpec(version=9, peers=[PEER_1, PEER_2])}))
    seen["newer_version_only"] = (plumbed, flood_list(device), record_version())
    # a push computed before that spec arrives late: ignored
    assert net.set_overlay(VPC, OverlaySpec(version=7, peers=[PEER_1]))
    seen["stale_push"] = (plumbed, flood_list(device), record_version())
    # a newer push with other peers: plumbed
    assert net.set_overlay(VPC, OverlaySpec(version=10, peers=[PEER_1]))
    seen["new_peers"] = (plumbed, flood_list(device), record_version())
    seen["reported_version"] = net.overlay_views()[VPC].version
    return seen


def test_a_version_only_change_is_recorded_without_replumbing_and_stale_pushes_stay_ignored(
    box: Sandbox,
) -> None:
    seen = box.call(box.host, _scenario, box.state_dir)
    assert seen["first"] == (1, {PEER_1, PEER_2}, 5)
    assert seen["newer_version_only"] == (1, {PEER_1, PEER_2}, 9)
    assert seen["stale_push"] == (1, {PEER_1, PEER_2}, 9)
    assert seen["new_peers"] == (2, {PEER_1}, 10)
    assert seen["reported_version"] == 10
    # a fresh agent (restart) reads the newest version back
    assert HostNetwork(box.state_dir, underlay_ip=LOCAL).overlay_views()[VPC].version == 10

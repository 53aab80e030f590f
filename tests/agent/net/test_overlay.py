"""The overlay's pure parts (MACs, the rendered nft filter, underlay detection), and the filter in a real nft."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from agent.net import overlay

from .helpers import create_netns, delete_netns, run_in_netns

VPC = "0a1b2c3d-0000-4000-8000-000000000001"

GOLDEN_FILTER = """\
table bridge lc-overlay-0a1b2c3d000 {}
delete table bridge lc-overlay-0a1b2c3d000
table bridge lc-overlay-0a1b2c3d000 {
  chain to_tunnel {
    type filter hook postrouting priority 0; policy accept;
    oifname != "lcx0a1b2c3d000" accept
    ether type arp ether saddr 02:4c:47:00:00:64 drop
    arp operation request arp daddr ip { 10.20.1.1, 10.20.2.254 } drop
    udp dport { 67, 68 } drop
    ether daddr 02:4c:47:00:00:64 drop
    ether saddr 02:4c:47:00:00:64 ether saddr set 02:4c:48:aa:bb:cc
  }
  chain from_tunnel {
    type filter hook prerouting priority 0; policy accept;
    iifname != "lcx0a1b2c3d000" accept
    ether saddr 02:4c:47:00:00:64 drop
    arp operation request arp daddr ip { 10.20.1.1, 10.20.2.254 } drop
    udp dport { 67, 68 } drop
    ether daddr 02:4c:47:00:00:64 drop
  }
}
"""


def _render() -> str:
    return overlay.render_filter(
        VPC,
        "lcx0a1b2c3d000",
        "02:4c:47:00:00:64",
        "02:4c:48:aa:bb:cc",
        ["10.20.2.254", "10.20.1.1", "10.20.1.1"],
    )


def test_gateway_mac_is_the_vni_in_a_locally_administered_unicast_mac() -> None:
    assert overlay.gateway_mac(100) == "02:4c:47:00:00:64"
    assert overlay.gateway_mac(0xABCDEF) == "02:4c:47:ab:cd:ef"
    first_octet = int(overlay.gateway_mac(1).split(":")[0], 16)
    assert first_octet & 0b10 and not first_octet & 0b1  # locally administered, unicast
    for bad in (0, 1 << 24):
        with pytest.raises(ValueError):
            overlay.gateway_mac(bad)


def test_host_mac_differs_per_host_and_never_equals_a_gateway_mac() -> None:
    macs = {overlay.host_mac(f"10.254.0.{n}") for n in range(1, 255)}
    assert len(macs) == 254
    assert all(mac.startswith("02:4c:48:") for mac in macs)
    assert overlay.host_mac("10.254.0.11") == overlay.host_mac("10.254.0.11")


def test_filter_renders_the_golden_rule_set() -> None:
    assert _render() == GOLDEN_FILTER


def test_filter_without_subnets_has_no_empty_gateway_set() -> None:
    script = overlay.render_filter(VPC, "lcx0a1b2c3d000", "02:4c:47:00:00:64", "02:4c:48:aa:bb:cc", [])
    assert "arp daddr" not in script and "{ }" not in script


def test_underlay_is_not_detected_for_a_loopback_or_missing_controller() -> None:
    assert overlay.detect_underlay_ip(None) is None
    assert overlay.detect_underlay_ip("http://127.0.0.1:8778") is None
    assert overlay.detect_underlay_ip("http://localhost:8778") is None
    assert overlay.resolve_underlay("10.254.0.11", "http://127.0.0.1:8778") == "10.254.0.11"


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables")
def test_nft_accepts_the_filter_and_applying_it_twice_changes_nothing() -> None:
    ns = create_netns()
    try:
        run_in_netns(
            ns, ["ip", "link", "add", "lcx0a1b2c3d000", "type", "vxlan", "id", "100", "dstport", "4789"]
        )

        def apply_and_list() -> str:
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=_render(), text=True, check=True
            )
            return run_in_netns(ns, ["nft", "-j", "list", "table", "bridge", "lc-overlay-0a1b2c3d000"])

        first, second = apply_and_list(), apply_and_list()
        rules = [item["rule"] for item in json.loads(first)["nftables"] if "rule" in item]
        assert len(rules) == 11
        assert _without_handles(second) == _without_handles(first)
        tables = run_in_netns(ns, ["nft", "-j", "list", "tables"])
        assert [t["table"]["name"] for t in json.loads(tables)["nftables"] if "table" in t] == [
            "lc-overlay-0a1b2c3d000"
        ]
    finally:
        delete_netns(ns)


def _without_handles(listing: str) -> list[dict[str, object]]:
    """The objects of an `nft -j` listing without their handles (which grow on every replace)."""
    items = json.loads(listing)["nftables"]
    return [
        {kind: {k: v for k, v in body.items() if k != "handle"}}
        for item in items
        for kind, body in item.items()
    ]

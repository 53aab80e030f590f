"""Gratuitous ARP: the frame's bytes, and a real neighbour entry on the other end of a veth that moves to the
announcing interface's MAC."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.net import garp

from .helpers import create_netns, delete_netns, run_in_netns, wait_until

MAC = bytes.fromhex("02aabbccddee")
EIP = "192.0.2.77"
OLD_MAC = "02:00:00:00:00:99"


def test_frame_is_a_broadcast_arp_request_for_the_address_itself() -> None:
    data = garp.frame(MAC, EIP)
    ip = bytes([192, 0, 2, 77])
    assert data[:6] == b"\xff" * 6 and data[6:12] == MAC and data[12:14] == b"\x08\x06"
    assert data[14:22] == bytes.fromhex("0001080006040001")  # Ethernet/IPv4, 6/4-byte addresses, request
    assert data[22:28] == MAC and data[28:32] == ip  # sender
    assert data[32:38] == b"\x00" * 6 and data[38:42] == ip  # target: the same address
    with pytest.raises(ValueError):
        garp.frame(b"\x02", EIP)


@pytest.mark.netns
def test_announce_moves_a_neighbour_entry_on_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent runs in its home, whose state dir `agent/net/` must not pass for the package.
    (tmp_path / "agent" / "net").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    speaker, listener = create_netns(), create_netns()
    try:
        veth = ["ip", "-n", speaker, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0"]
        subprocess.run([*veth, "netns", listener], check=True)
        for ns, dev in ((speaker, "ext0"), (listener, "eth0")):
            run_in_netns(ns, ["ip", "link", "set", dev, "up"])
        run_in_netns(listener, ["ip", "addr", "add", "192.0.2.1/24", "dev", "eth0"])
        # The listener believes the EIP is elsewhere (a stale entry, as left by the host that had it before).
        run_in_netns(
            listener, ["ip", "neigh", "replace", EIP, "lladdr", OLD_MAC, "dev", "eth0", "nud", "stale"]
        )
        speaker_mac = json.loads(run_in_netns(speaker, ["ip", "-j", "link", "show", "ext0"]))[0]["address"]

        garp.announce(f"/run/netns/{speaker}", "ext0", [EIP])

        def learned() -> bool:
            entry = json.loads(run_in_netns(listener, ["ip", "-j", "neigh", "show", EIP, "dev", "eth0"]))
            return [e.get("lladdr") for e in entry] == [speaker_mac]

        wait_until(learned, f"the listener to map {EIP} to {speaker_mac}")
    finally:
        delete_netns(speaker)
        delete_netns(listener)

"""Guest taps on their VPC bridges.

libvirt creates a guest's tap and enslaves it to the bridge once, when the domain starts. A bridge that is
deleted behind the agent's back (and rebuilt by `ensure_network`) comes back without the taps of the guests
still running, which are then cut off although their qemu, rules and DHCP entry are fine. So every port sync
puts each existing tap back on its VPC's bridge; a tap already there is left alone (no netlink write). A tap
that is down is left alone too: libvirt creates a tap down, enslaves it and only then sets it up, so a down tap
off its bridge is one a domain start (maybe a concurrent create's) is still plugging, and enslaving it first
would make that start fail (EBUSY). A tap cut off by a bridge deletion stays up.
"""

from __future__ import annotations

import json
import logging

from agent.net import links, names, proc
from agent.net.ports import BoundPort

log = logging.getLogger(__name__)


def reattach(ports: list[BoundPort]) -> list[str]:
    """Enslave every existing tap of `ports` to its VPC's bridge; returns the taps that had to be moved.

    A tap that does not exist (the guest is off, or on libvirt's test driver), is down (libvirt is still
    plugging it) or whose bridge is missing is skipped: libvirt plugs it when the guest starts, and a missing
    bridge is `ensure_network`'s to make.
    """
    if not ports:
        return []
    moved: list[str] = []
    # One `ip -j link` rather than a netlink dump through pyroute2, whose decoding of every attribute of every
    # link costs a second or more with hundreds of taps: this runs on every sync (and housekeeping).
    listed = json.loads(proc.run(["ip", "-j", "link"]) or "[]")
    found = {link["ifname"]: link.get("master") for link in listed}
    up = {link["ifname"] for link in listed if "UP" in link.get("flags", [])}
    stray = [
        bp
        for bp in ports
        if bp.tap in up
        and names.bridge_name(bp.port.vpc_id) in found
        and found[bp.tap] != names.bridge_name(bp.port.vpc_id)
    ]
    if not stray:
        return moved
    with links.netlink() as host:
        for bp in stray:
            bridge_name = names.bridge_name(bp.port.vpc_id)
            tap, bridge = links.index(host, bp.tap), links.index(host, bridge_name)
            if tap is None or bridge is None:
                continue
            host.link("set", index=tap, master=bridge, state="up")
            moved.append(bp.tap)
            log.warning("tap %s was not on bridge %s: put back", bp.tap, bridge_name)
    return moved

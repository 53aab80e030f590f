"""Guest taps on their VPC bridges.

libvirt creates a guest's tap and enslaves it to the bridge once, when the domain starts. A bridge that is
deleted behind the agent's back (and rebuilt by `ensure_network`) comes back without the taps of the guests
still running, which are then cut off although their qemu, rules and DHCP entry are fine. So every port sync
puts each existing tap back on its VPC's bridge; a tap already there is left alone (no netlink write).
"""

from __future__ import annotations

import logging

from agent.net import links, names
from agent.net.ports import BoundPort

log = logging.getLogger(__name__)


def reattach(ports: list[BoundPort]) -> list[str]:
    """Enslave every existing tap of `ports` to its VPC's bridge; returns the taps that had to be moved.

    A tap that does not exist (the guest is off, or on libvirt's test driver) or whose bridge is missing is
    skipped: libvirt plugs it when the guest starts, and a missing bridge is `ensure_network`'s to make.
    """
    if not ports:
        return []
    moved: list[str] = []
    with links.netlink() as host:
        # One dump of every link rather than two lookups per port: this runs on every sync (and housekeeping).
        found = {link.get("ifname"): (link["index"], link.get("master")) for link in host.get_links()}
        for bp in ports:
            bridge_name = names.bridge_name(bp.port.vpc_id)
            tap, bridge = found.get(bp.tap), found.get(bridge_name)
            if tap is None or bridge is None or tap[1] == bridge[0]:
                continue
            host.link("set", index=tap[0], master=bridge[0], state="up")
            moved.append(bp.tap)
            log.warning("tap %s was not on bridge %s: put back", bp.tap, bridge_name)
    return moved

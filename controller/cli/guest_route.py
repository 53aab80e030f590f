"""Which network namespace the CLI must reach a guest's fixed IP from, on the host that runs the guest.

The host's routing table can send a CIDR into one VPC only: of two VPCs with the same (or an overlapping) CIDR
wired on one host, the host itself routes to the first (`agent/net/links.sync_routes`), so a plain `ssh` to a
guest of the second would reach the first VPC's guest with that address, or nothing. The guest's own VPC router
namespace holds the VPC's gateways, where the address is unambiguous: when the host's route to the address does
not lead into the guest's VPC, the CLI enters that namespace (as root, like everything on a host).
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from agent.errors import NetworkError
from agent.net import names, router
from agent.net.state import NetworkStore

log = logging.getLogger(__name__)


def route_device(ip: str) -> str | None:
    """The device the current namespace routes `ip` through (`ip -j route get`), None if none does."""
    done = subprocess.run(["ip", "-j", "route", "get", ip], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    routes = json.loads(done.stdout or "[]")
    return routes[0].get("dev") if routes else None


def router_netns_for(agent_state: Path, vpc_id: str, ip: str) -> str | None:
    """`/proc/<pid>/ns/net` of the VPC's router on this host when the host's own route to `ip` leads elsewhere;
    None when the plain route is right, or the VPC has no live router here (the guest runs on another host)."""
    store = NetworkStore(agent_state.resolve() / "net")
    try:
        record = store.load(vpc_id)
    except NetworkError:
        return None
    if record is None or record.router is None:
        return None
    if not router.is_alive(record.router, vpc_id, str(store.root)):
        return None
    device = route_device(ip)
    if device == names.host_uplink_name(vpc_id):
        return None
    log.info("the host routes %s via %s, not into VPC %s: using its router namespace", ip, device, vpc_id)
    return record.router.netns_path

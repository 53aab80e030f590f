"""Netlink verbs on one namespace: links, addresses and routes through pyroute2.

Every verb is idempotent (`ensure_*` creates what is missing, `sync_*` makes a set of addresses or routes
exact) and works on the `IPRoute` it is given, so the same code serves the host namespace and router
namespaces.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from agent.errors import NetworkError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

MAIN_TABLE = 254
RTNH_F_ONLINK = 4


def _pyroute2() -> ModuleType:
    """pyroute2, imported on first use: it adds ~9 MB to a process, and an agent with no VPC network yet (or a
    simulated host on libvirt's test driver) never needs it."""
    import pyroute2

    return pyroute2


@contextlib.contextmanager
def netlink(netns_path: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute on the current namespace, or on the one at `netns_path` (e.g. /proc/<pid>/ns/net)."""
    where = netns_path or "the host namespace"
    try:
        ipr = _pyroute2().IPRoute() if netns_path is None else _pyroute2().IPRoute(netns=netns_path, flags=0)
    except (_pyroute2().NetlinkError, OSError, RuntimeError) as exc:
        raise NetworkError(f"cannot open netlink in {where}: {exc}") from exc
    try:
        yield ipr
    except _pyroute2().NetlinkError as exc:
        raise NetworkError(f"netlink request in {where} failed: {exc}") from exc
    finally:
        ipr.close()


def index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def names_with_prefix(ipr: IPRoute, prefix: str) -> list[str]:
    names = (link.get("ifname") for link in ipr.get_links())
    return sorted(name for name in names if name and name.startswith(prefix))


def _kind(ipr: IPRoute, idx: int) -> str | None:
    link = ipr.get_links(idx)[0]
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def ensure_bridge(ipr: IPRoute, name: str) -> int:
    """A Linux bridge named `name`, up; returns its index."""
    idx = index(ipr, name)
    if idx is None:
        # nf_call_iptables on the bridge itself keeps security groups working even if someone turns the
        # global net.bridge.bridge-nf-call-iptables off later.
        ipr.link("add", ifname=name, kind="bridge", br_nf_call_iptables=1, br_nf_call_ip6tables=1)
        idx = index(ipr, name)
        log.info("created bridge %s", name)
    elif _kind(ipr, idx) != "bridge":
        raise NetworkError(f"{name} exists but is not a bridge")
    assert idx is not None
    data = ("IFLA_LINKINFO", "IFLA_INFO_DATA")
    link = ipr.get_links(idx)[0]
    if (
        link.get_nested(*data, "IFLA_BR_NF_CALL_IPTABLES"),
        link.get_nested(*data, "IFLA_BR_NF_CALL_IP6TABLES"),
    ) != (1, 1):
        ipr.link("set", index=idx, kind="bridge", br_nf_call_iptables=1, br_nf_call_ip6tables=1)
    disable_ipv6(name)
    ipr.link("set", index=idx, state="up")
    return idx


def ensure_veth(ipr: IPRoute, name: str, peer_ipr: IPRoute, peer: str, peer_pid: int) -> tuple[int, int]:
    """A veth pair `name` (here) <-> `peer` (in the namespace of `peer_pid`), both up; returns both indexes.

    An existing pair is kept only if its two ends really point at each other; anything else is rebuilt.
    """
    idx, peer_idx = index(ipr, name), index(peer_ipr, peer)
    if idx is not None and peer_idx is not None and _veth_peers(ipr, idx, peer_ipr, peer_idx):
        pass
    else:
        if idx is not None:
            ipr.link("del", index=idx)
        if peer_idx is not None:
            peer_ipr.link("del", index=peer_idx)
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_pid": peer_pid})
        idx, peer_idx = index(ipr, name), index(peer_ipr, peer)
        if idx is None or peer_idx is None:
            raise NetworkError(f"veth {name} <-> {peer} was created but cannot be found")
        log.info("created veth %s <-> %s", name, peer)
    disable_ipv6(name)
    ipr.link("set", index=idx, state="up")
    peer_ipr.link("set", index=peer_idx, state="up")
    return idx, peer_idx


def _veth_peers(ipr: IPRoute, idx: int, peer_ipr: IPRoute, peer_idx: int) -> bool:
    here, there = ipr.get_links(idx)[0], peer_ipr.get_links(peer_idx)[0]
    return (
        _kind(ipr, idx) == "veth"
        and _kind(peer_ipr, peer_idx) == "veth"
        and here.get("link") == peer_idx
        and there.get("link") == idx
    )


def set_master(ipr: IPRoute, idx: int, master_idx: int) -> None:
    if ipr.get_links(idx)[0].get("master") != master_idx:
        ipr.link("set", index=idx, master=master_idx)


def set_up(ipr: IPRoute, name: str) -> None:
    idx = index(ipr, name)
    if idx is None:
        raise NetworkError(f"link {name} does not exist")
    ipr.link("set", index=idx, state="up")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete a link if it exists (for a veth this removes both ends); True if something was deleted."""
    idx = index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except _pyroute2().NetlinkError as exc:
        if exc.code != errno.ENODEV:  # gone in the meantime (its namespace was just freed)
            raise
    log.info("deleted link %s", name)
    return True


def sync_addresses(ipr: IPRoute, idx: int, wanted: set[ipaddress.IPv4Interface]) -> None:
    """Make the IPv4 addresses on link `idx` exactly `wanted`."""
    present = {
        ipaddress.IPv4Interface(f"{addr.get('address')}/{addr['prefixlen']}")
        for addr in ipr.get_addr(index=idx, family=socket.AF_INET)
    }
    for iface in sorted(present - wanted):
        ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    for iface in sorted(wanted - present):
        ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def replace_default_route(ipr: IPRoute, idx: int, gateway: str) -> None:
    """default via `gateway` dev `idx` onlink."""
    ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=idx, flags=RTNH_F_ONLINK)


def sync_routes(ipr: IPRoute, idx: int, wanted: set[ipaddress.IPv4Network], gateway: str) -> None:
    """Make the main-table routes through link `idx` exactly `wanted`, each via `gateway` onlink.

    A destination that some other link already routes is left to that link, with a warning: two VPCs with
    overlapping CIDRs on one host cannot both be reached from the host (EIPs solve that).
    """
    present: set[ipaddress.IPv4Network] = set()
    for route in ipr.get_routes(family=socket.AF_INET, oif=idx, table=MAIN_TABLE):
        if route.get("table") != MAIN_TABLE or route.get("gateway") is None:
            continue
        present.add(ipaddress.IPv4Network(f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}"))
    for net in sorted(present - wanted):
        ipr.route("del", dst=str(net), oif=idx, table=MAIN_TABLE)
    for net in sorted(wanted - present):
        try:
            ipr.route("add", dst=str(net), gateway=gateway, oif=idx, flags=RTNH_F_ONLINK)
        except _pyroute2().NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            log.warning(
                "route to %s already exists on another link; not reachable from the host via %s", net, idx
            )


def disable_ipv6(name: str) -> None:
    """No IPv6 on our host-side devices: a link-local address on a bridge would let guests reach the host."""
    knob = Path("/proc/sys/net/ipv6/conf") / name / "disable_ipv6"
    if knob.exists() and knob.read_text().strip() != "1":
        knob.write_text("1\n")


# --- VXLAN overlay ---

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
ALL_ZEROS_MAC = "00:00:00:00:00:00"  # the fdb entry a VXLAN device floods broadcast/unknown frames to
NUD_PERMANENT = 0x80


def link_with_address(ipr: IPRoute, address: str) -> tuple[int, int]:
    """(index, MTU) of the link that carries the IPv4 `address`; NetworkError if none does."""
    for addr in ipr.get_addr(family=socket.AF_INET, address=address):
        idx = addr["index"]
        return idx, int(ipr.get_links(idx)[0].get("mtu"))
    raise NetworkError(f"no interface here has the underlay address {address}")


def ensure_vxlan(ipr: IPRoute, name: str, vni: int, local: str, underlay_idx: int, mtu: int) -> int:
    """A VXLAN device with MAC learning on (flooding goes to the fdb's all-zeros entries), up; returns its index.

    One whose VNI, local address or underlay link differ is rebuilt (its flood entries go with it).
    """
    idx = index(ipr, name)
    if idx is not None:
        link = ipr.get_links(idx)[0]
        data = ("IFLA_LINKINFO", "IFLA_INFO_DATA")
        have = (
            _kind(ipr, idx),
            link.get_nested(*data, "IFLA_VXLAN_ID"),
            link.get_nested(*data, "IFLA_VXLAN_LOCAL"),
            link.get_nested(*data, "IFLA_VXLAN_LINK"),
        )
        if have != ("vxlan", vni, local, underlay_idx):
            log.info("rebuilding %s: it is %s, want vxlan vni %s local %s", name, have, vni, local)
            ipr.link("del", index=idx)
            idx = None
    if idx is None:
        ipr.link(
            "add",
            ifname=name,
            kind="vxlan",
            vxlan_id=vni,
            vxlan_local=local,
            vxlan_port=VXLAN_PORT,
            vxlan_link=underlay_idx,
            vxlan_learning=1,
            mtu=mtu,
        )
        idx = index(ipr, name)
        if idx is None:
            raise NetworkError(f"vxlan {name} was created but cannot be found")
        log.info("created vxlan %s (vni %s, local %s, mtu %s)", name, vni, local, mtu)
    disable_ipv6(name)
    if ipr.get_links(idx)[0].get("mtu") != mtu:
        ipr.link("set", index=idx, mtu=mtu)
    ipr.link("set", index=idx, state="up")
    return idx


def flood_peers(ipr: IPRoute, idx: int) -> set[str]:
    """The remote VTEPs a VXLAN device floods to (its all-zeros fdb entries)."""
    return {
        str(entry.get("NDA_DST"))
        for entry in ipr.fdb("dump", ifindex=idx)
        if entry["ifindex"] == idx and entry.get("NDA_LLADDR") == ALL_ZEROS_MAC and entry.get("NDA_DST")
    }


def sync_flood_peers(ipr: IPRoute, idx: int, wanted: set[str]) -> None:
    """Head-end replication: make the device's all-zeros entries exactly one per peer in `wanted`."""
    present = flood_peers(ipr, idx)
    for peer in sorted(present - wanted):
        ipr.fdb("del", ifindex=idx, lladdr=ALL_ZEROS_MAC, dst=peer)
    for peer in sorted(wanted - present):
        ipr.fdb("append", ifindex=idx, lladdr=ALL_ZEROS_MAC, dst=peer)
    if present != wanted:
        log.info("vxlan %s floods to %s", idx, sorted(wanted) or "nobody")


def set_mac(ipr: IPRoute, idx: int, mac: str) -> None:
    if str(ipr.get_links(idx)[0].get("IFLA_ADDRESS")).lower() != mac.lower():
        ipr.link("set", index=idx, address=mac)


def sync_neighbours(ipr: IPRoute, idx: int, wanted: dict[str, str]) -> None:
    """Make the permanent IPv4 neighbours (IP -> MAC) on link `idx` exactly `wanted`; learned ones are kept."""
    present = {
        str(n.get("NDA_DST")): str(n.get("NDA_LLADDR")).lower()
        for n in ipr.get_neighbours(ifindex=idx, family=socket.AF_INET)
        if n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR")
    }
    for ip in sorted(set(present) - set(wanted)):
        ipr.neigh("del", dst=ip, ifindex=idx)
    for ip, mac in sorted(wanted.items()):
        if present.get(ip) != mac.lower():
            ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=idx, state=NUD_PERMANENT)

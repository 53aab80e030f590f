"""The VXLAN overlay of a VPC on one host, and the filter that keeps its gateway distributed.

Each VPC bridge that has peers gets a VXLAN device `lcx<vpc>` (VNI = the VPC's, local = this host's underlay
address) as one more port. MAC learning is on; broadcast and unknown unicast go to every peer by head-end
replication (one all-zeros fdb entry per peer VTEP, the list the controller pushes).

Every host runs the same gateway: gw0 in each router namespace carries the same gateway IPs *and the same MAC*
(derived from the VNI), so a guest always talks to its own host's router. That only works if the gateways never
see each other, so an nftables table per VPC (bridge family, matching only the VXLAN port) keeps these off the
tunnel, in both directions:

* ARP requests for a gateway IP (each host answers its own guests), and ARP from the gateway MAC;
* DHCP (each host's dnsmasq serves only its own ports);
* frames to the gateway MAC (the local router has them).

Frames the router *routes* to a guest on another host leave with the gateway MAC as source; the filter rewrites
it to a MAC of this host (`host_mac`) so the far bridge never learns the gateway MAC on its tunnel port. The
router reaches remote guests through static neighbours (their IP -> MAC, from the controller), because its own
ARP requests must not cross.

Why nftables and not tc or ebtables: tc's classifiers (flower, u32) are not built into every kernel (this
machine's lacks them), and ebtables shares its tables with whatever else runs on the host, so an atomic
restore would clobber others' rules. A table of our own per VPC is replaced atomically with one `nft -f`
transaction and deleted with the VPC's network.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from agent.errors import NetworkError
from agent.net import names, proc

log = logging.getLogger(__name__)

DHCP_PORTS = (67, 68)


def gateway_mac(vni: int) -> str:
    """The MAC of a VPC's gateway, the same on every host: locally administered, from the VNI (24 bits)."""
    if not 0 < vni < 1 << 24:
        raise ValueError(f"VNI {vni} is outside 1..16777215")
    return "02:4c:47:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big"))


def host_mac(underlay_ip: str) -> str:
    """The source MAC that routed frames from this host's gateway carry across the tunnel: unique per host."""
    digest = hashlib.sha256(ipaddress.IPv4Address(underlay_ip).packed).digest()
    return "02:4c:48:" + ":".join(f"{b:02x}" for b in digest[:3])


def render_filter(vpc_id: str, device: str, gw_mac: str, local_mac: str, gateway_ips: Iterable[str]) -> str:
    """The nft script that (re)defines the VPC's overlay table atomically (pure).

    Declaring the table, deleting it and defining it again in one transaction replaces any old content, so
    applying twice changes nothing and nobody ever sees a half-written table.
    """
    table = names.overlay_table(vpc_id)
    gateways = sorted({str(ipaddress.IPv4Address(ip)) for ip in gateway_ips}, key=ipaddress.IPv4Address)
    dhcp = "{ " + ", ".join(str(p) for p in DHCP_PORTS) + " }"
    keep_local = [
        f"ether type arp ether saddr {gw_mac} drop",
        *([f"arp operation request arp daddr ip {{ {', '.join(gateways)} }} drop"] if gateways else []),
        f"udp dport {dhcp} drop",
        f"ether daddr {gw_mac} drop",
    ]
    out = [f'oifname != "{device}" accept', *keep_local, f"ether saddr {gw_mac} ether saddr set {local_mac}"]
    into = [f'iifname != "{device}" accept', f"ether saddr {gw_mac} drop", *keep_local[1:]]
    lines = [
        f"table bridge {table} {{}}",
        f"delete table bridge {table}",
        f"table bridge {table} {{",
        "  chain to_tunnel {",
        "    type filter hook postrouting priority 0; policy accept;",
        *(f"    {rule}" for rule in out),
        "  }",
        "  chain from_tunnel {",
        "    type filter hook prerouting priority 0; policy accept;",
        *(f"    {rule}" for rule in into),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply_filter(script: str) -> None:
    proc.run(["nft", "-f", "-"], stdin=script)


def delete_filter(vpc_id: str) -> None:
    table = names.overlay_table(vpc_id)
    if table in owned_tables():
        proc.run(["nft", "delete", "table", "bridge", table])
        log.info("deleted nft table %s", table)


def owned_tables() -> list[str]:
    """Our overlay tables in this namespace (bridge family)."""
    out = proc.run(["nft", "-j", "list", "tables", "bridge"])
    try:
        doc = json.loads(out or "{}")
    except ValueError as exc:
        raise NetworkError(f"cannot parse `nft -j list tables`: {exc}") from exc
    found = [item["table"]["name"] for item in doc.get("nftables", []) if "table" in item]
    return sorted(name for name in found if name.startswith(names.OVERLAY_TABLE_PREFIX))


def delete_all_filters() -> None:
    for table in owned_tables():
        proc.run(["nft", "delete", "table", "bridge", table])


def detect_underlay_ip(controller_url: str | None) -> str | None:
    """The address this host uses to reach the controller, if that is not loopback: its VTEP address.

    A UDP `connect` only asks the kernel for the route; nothing is sent. An all-in-one cloud (the controller on
    127.0.0.1) has no underlay and no overlay.
    """
    if not controller_url:
        return None
    parts = urlsplit(controller_url)
    if not parts.hostname:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    for _family, _type, _proto, _name, sockaddr in infos:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(sockaddr)
            local = str(sock.getsockname()[0])
            if not ipaddress.IPv4Address(local).is_loopback:
                return local
    return None


def resolve_underlay(configured: str | None, controller_url: str | None) -> str | None:
    """The VTEP address: the configured one, else the one detected from the route to the controller."""
    if configured:
        return str(ipaddress.IPv4Address(configured))
    return detect_underlay_ip(controller_url)


def check_local_address(address: str) -> None:
    """NetworkError unless `address` is on an interface of this namespace (binding proves it; no netlink, so
    this also works from the agent's event loop at start-up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            raise NetworkError(
                f"the underlay address {address} (LABCLOUD_AGENT_UNDERLAY_IP or detected) is not on any "
                f"interface here: {exc.strerror}"
            ) from None

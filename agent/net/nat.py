"""The external network's NAT and filter rules, rendered as `iptables-restore` input: pure functions, no I/O.

Two places do NAT (see `external` for the picture):

- a VPC's **router namespace** maps each EIP bound to one of its ports on this host 1:1 (DNAT in, SNAT out on
  its external leg `ex0`), and with shared SNAT on, maps every other guest to the router's own transit address;
  its FORWARD chain lets onto `ex0` only what it is allowed to NAT, and from `ex0` only replies and DNATed
  connections. The router is the one place where a fixed IP means one guest: VPCs may overlap.
- the host's **external namespace** routes each EIP to its VPC's router, answers ARP for it (proxy entries) and
  SNATs the routers' transit addresses (shared SNAT) to the host's own external address. It forwards from the
  external side only to bound EIPs.

Each namespace is ours alone, so the `nat` and `filter` tables are replaced whole and atomically (a table named
in `iptables-restore` input without `--noflush` is flushed first).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from agent.schemas import FloatingIpSpec

ROUTER_EXTERNAL_DEV = "ex0"  # in a router namespace: the leg to the host's external namespace
EXTERNAL_DEV = "ext0"  # in the external namespace: the macvlan on the host's external device
TRANSIT_LINK_PREFIX = "lce"  # in the external namespace: the leg to one VPC's router (lce<vpc id11>)
# Point-to-point /31 links between the external namespace and the routers, one per VPC on this host. Link-local,
# so they never collide with a VPC's CIDR (those are private ranges) nor with the external network.
TRANSIT_NET = ipaddress.IPv4Network("169.254.64.0/18")
MAX_TRANSIT_LINKS = TRANSIT_NET.num_addresses // 2


def transit_pair(index: int) -> tuple[str, str]:
    """(external namespace side, router side) addresses of transit link `index`, each a /31 of one pair."""
    if not 0 <= index < MAX_TRANSIT_LINKS:
        raise ValueError(f"transit link index {index} is out of range")
    base = TRANSIT_NET.network_address + 2 * index
    return str(base), str(base + 1)


def _host(ip: str) -> str:
    return f"{ipaddress.IPv4Address(ip)}/32"


def render_router(floating: Sequence[FloatingIpSpec], *, snat: bool, transit_ip: str | None) -> str:
    """The router namespace's nat and filter tables for its VPC's EIPs on this host and its SNAT switch.

    `transit_ip` None: the host has no external leg for this router, so nothing may leave towards it.
    """
    fips = sorted(floating, key=lambda f: ipaddress.IPv4Address(f.eip))
    ex = ROUTER_EXTERNAL_DEV
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    nat.append(":POSTROUTING ACCEPT [0:0]")
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if transit_ip is not None:
        for fip in fips:
            nat.append(f"-A PREROUTING -d {_host(fip.eip)} -i {ex} -j DNAT --to-destination {fip.fixed_ip}")
        for fip in fips:
            nat.append(f"-A POSTROUTING -s {_host(fip.fixed_ip)} -o {ex} -j SNAT --to-source {fip.eip}")
        if snat:
            nat.append(f"-A POSTROUTING -o {ex} -j SNAT --to-source {transit_ip}")
    # From the outside: replies, and new connections only to what a DNAT rule sent in.
    filt += [
        f"-A INPUT -i {ex} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A INPUT -i {ex} -j DROP",
        f"-A FORWARD -i {ex} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A FORWARD -i {ex} -m conntrack --ctstate DNAT -j ACCEPT",
        f"-A FORWARD -i {ex} -j DROP",
    ]
    if transit_ip is not None:
        filt += [f"-A FORWARD -s {_host(fip.fixed_ip)} -o {ex} -j ACCEPT" for fip in fips]
    filt.append(f"-A FORWARD -o {ex} -j {'ACCEPT' if snat and transit_ip is not None else 'DROP'}")
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT"]) + "\n"


def render_external(floating: Iterable[FloatingIpSpec], links: dict[str, str], host_ip: str) -> str:
    """The external namespace's nat and filter tables: forward to bound EIPs (of VPCs with a transit link on
    this host, `links`: VPC id -> its `lce` device), from the routers to the outside, SNAT of transit addresses."""
    fips = sorted((f for f in floating if f.vpc_id in links), key=lambda f: ipaddress.IPv4Address(f.eip))
    ext = EXTERNAL_DEV
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    nat += [
        ":POSTROUTING ACCEPT [0:0]",
        f"-A POSTROUTING -s {TRANSIT_NET} -o {ext} -j SNAT --to-source {host_ip}",
    ]
    filt = [
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -p icmp -j ACCEPT",
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    filt += [f"-A FORWARD -d {_host(f.eip)} -o {links[f.vpc_id]} -j ACCEPT" for f in fips]
    filt.append(f"-A FORWARD -i {TRANSIT_LINK_PREFIX}+ -o {ext} -j ACCEPT")
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT"]) + "\n"

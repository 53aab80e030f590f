"""Layer-2 anti-spoofing of guest ports: one nftables table (bridge family), rendered purely, applied atomically.

iptables (via br_netfilter) only sees IP packets, so a guest could still answer ARP for a neighbour's address
(ARP poisoning) or send frames of other ethertypes with any MAC. This table checks every frame a guest sends,
before the bridge forwards or learns it:

    table bridge lc-antispoof
      chain from_guests   prerouting hook: a frame from a known tap jumps to its port's chain; from any other
                          `lct*` tap (a port not synced, or gone) it is dropped
      chain port-<id11>   source MAC must be the port's; ARP must carry the port's MAC and IP as sender (an
                          ARP probe's 0.0.0.0 is allowed for requests); IPv4 must come from the port's IP (or be
                          its DHCP request from 0.0.0.0); everything else (IPv6, VLAN tags, other ethertypes)
                          is dropped

Why nftables rather than ebtables: `ebtables-restore` replaces whole tables that other software on the host may
share, while a table of our own is replaced in one `nft -f` transaction and deleted alone (the VPC overlay filter
in `overlay` works the same way). The table is rendered exactly as `nft list table` prints it,
so the kernel's listing is the oracle (verdict map elements sorted, see `canonical`): equal text means nothing
to do, and anything changed behind our back shows up as a difference and is rewritten on the next sync.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from agent.errors import NetworkError
from agent.net import names, proc
from agent.net.ports import BoundPort

log = logging.getLogger(__name__)

TABLE = names.ANTISPOOF_TABLE
FAMILY = "bridge"
_DISPATCH = "from_guests"


def port_chain(port_id: str) -> str:
    return "port-" + names.id11(port_id)


def render_table(ports: Sequence[BoundPort]) -> str:
    """The table as `nft list table bridge lc-antispoof` prints it; "" when no port needs it (pure)."""
    bound = sorted(ports, key=lambda bp: bp.tap)
    if not bound:
        return ""
    out = [f"table {FAMILY} {TABLE} {{", f"\tchain {_DISPATCH} {{"]
    out.append("\t\ttype filter hook prerouting priority filter; policy accept;")
    # nft prints a verdict map's elements sorted by key, which sorting by tap reproduces.
    jumps = ", ".join(f'"{bp.tap}" : jump {port_chain(bp.port.id)}' for bp in bound)
    out.append(f"\t\tiifname vmap {{ {jumps} }}")
    out.append(f'\t\tiifname "{names.TAP_PREFIX}*" drop')
    out.append("\t}")
    for bp in bound:
        out += ["", *_port_chain(bp)]
    out.append("}")
    return "\n".join(out) + "\n"


def _port_chain(bp: BoundPort) -> list[str]:
    mac = bp.port.mac.lower()
    try:
        ip = str(ipaddress.IPv4Address(bp.port.ip))
    except ValueError as exc:
        raise NetworkError(f"port {bp.port.id}: {exc}") from exc
    rules = [
        f"ether saddr != {mac} drop",
        f"arp saddr ether != {mac} drop",
        f"arp saddr ip {ip} accept",
        # An ARP probe (RFC 5227) asks from 0.0.0.0 before the guest uses its address.
        "arp operation request arp saddr ip 0.0.0.0 accept",
        "ether type arp drop",
        f"ip saddr {ip} accept",
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
        "drop",
    ]
    return [f"\tchain {port_chain(bp.port.id)} {{", *(f"\t\t{rule}" for rule in rules), "\t}"]


def render_replace(table: str) -> str:
    """`nft -f` input that replaces our table with `table` (or removes it when "") in one transaction."""
    lines = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}"]
    return "\n".join(lines) + "\n" + table


def canonical(listing: str) -> str:
    """The listing with every verdict map's elements sorted: nft prints a large map in its hash order."""
    out = []
    for line in listing.splitlines():
        head, sep, rest = line.partition("vmap { ")
        if sep and rest.endswith(" }"):
            elements = sorted(rest[: -len(" }")].split(", "))
            line = f"{head}{sep}{', '.join(elements)} }}"
        out.append(line)
    return "\n".join(out) + ("\n" if listing.endswith("\n") else "")


def read_table() -> str:
    """Our table as the kernel lists it; "" if it does not exist."""
    listed = proc.run(["nft", "list", "tables", FAMILY])
    if f"table {FAMILY} {TABLE}" not in listed.splitlines():
        return ""
    return proc.run(["nft", "list", "table", FAMILY, TABLE])


def sync(desired: str) -> bool:
    """Make the kernel's table exactly `desired`; False if it already was."""
    current = read_table()
    if canonical(current) == desired:
        return False
    proc.run(["nft", "-f", "-"], stdin=render_replace(desired))
    after = read_table()
    if canonical(after) != desired:
        # A rule rendered differently from nft's own spelling would be rewritten on every sync: say so.
        log.warning("nft table %s reads back differently from what was rendered:\n%s", TABLE, after)
    return True

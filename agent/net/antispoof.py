"""Layer-2 anti-spoofing of guest ports: one nftables table (bridge family), rendered purely, updated per port.

iptables (via br_netfilter) only sees IP packets, so a guest could still answer ARP for a neighbour's address
(ARP poisoning) or send frames of other ethertypes with any MAC. This table checks every frame a guest sends,
before the bridge forwards or learns it:

    table bridge lc-antispoof
      map ports           tap name -> jump to its port's chain
      chain from_guests   prerouting hook: a frame from a known tap jumps to its port's chain (`@ports`); from
                          any other `lct*` tap (a port not synced, or gone) it is dropped
      chain port-<id11>   source MAC must be the port's; ARP must carry the port's MAC and IP as sender (an
                          ARP probe's 0.0.0.0 is allowed for requests); IPv4 must come from the port's IP (or be
                          its DHCP request from 0.0.0.0); everything else (IPv6, VLAN tags, other ethertypes)
                          is dropped

Why nftables rather than ebtables: `ebtables-restore` replaces whole tables that other software on the host may
share, while a table of our own is changed in one `nft -f` transaction and deleted alone (the VPC overlay filter
in `overlay` works the same way). The map is named, so a port comes and goes as one map element and one chain
(`render_update`), never a rewrite of the table; a missing or damaged skeleton (map, dispatch chain) gets the
whole table replaced. The table is rendered exactly as `nft list table` prints it, so the kernel's listing is
the oracle: both are parsed into a `TableState` (map elements are listed in hash order, chains in creation
order) and compared; anything changed behind our back shows up as a difference and is put right.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.errors import NetworkError
from agent.net import names, proc
from agent.net.ports import BoundPort

log = logging.getLogger(__name__)

TABLE = names.ANTISPOOF_TABLE
FAMILY = "bridge"
KERNEL_READ_EVERY_S = 20.0  # as the iptables tables (`firewall`): trust what was written for this long
_DISPATCH = "from_guests"
_MAP = "ports"
_MAP_HEAD = ("type ifname : verdict",)
_DISPATCH_RULES = (
    "type filter hook prerouting priority filter; policy accept;",
    f"iifname vmap @{_MAP}",
    f'iifname "{names.TAP_PREFIX}*" drop',
)
_ELEMENTS_INDENT = "\t\t\t     "  # nft's continuation indent under `elements = { `


def port_chain(port_id: str) -> str:
    return "port-" + names.id11(port_id)


@dataclass(frozen=True)
class TableState:
    """The table as data: map name -> its header lines, map elements, chain name -> rules. Empty: no table."""

    maps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    elements: frozenset[str] = frozenset()  # of the `ports` map, e.g. `"lct…" : jump port-…`
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return bool(self.maps or self.elements or self.chains)

    def skeleton(self) -> tuple[object, ...]:
        return (self.maps, self.chains.get(_DISPATCH))


def render_table(ports: Sequence[BoundPort]) -> str:
    """The table as `nft list table bridge lc-antispoof` prints it; "" when no port needs it (pure)."""
    return format_table(render_state(ports))


def render_state(ports: Sequence[BoundPort]) -> TableState:
    bound = sorted(ports, key=lambda bp: bp.tap)
    if not bound:
        return TableState()
    chains = {_DISPATCH: _DISPATCH_RULES}
    chains.update({port_chain(bp.port.id): _port_chain(bp) for bp in bound})
    elements = frozenset(f'"{bp.tap}" : jump {port_chain(bp.port.id)}' for bp in bound)
    return TableState(maps={_MAP: _MAP_HEAD}, elements=elements, chains=chains)


def format_table(state: TableState) -> str:
    """`state` in nft's listing format, elements and port chains sorted (pure); "" for no table."""
    if not state.exists:
        return ""
    out = [f"table {FAMILY} {TABLE} {{"]
    blocks: list[list[str]] = []
    for name in sorted(state.maps):
        block = [f"\tmap {name} {{", *(f"\t\t{line}" for line in state.maps[name])]
        if name == _MAP and state.elements:
            items = sorted(state.elements)
            block.append("\t\telements = { " + f",\n{_ELEMENTS_INDENT}".join(items) + " }")
        blocks.append([*block, "\t}"])
    for name in sorted(state.chains, key=lambda chain: (chain != _DISPATCH, chain)):
        blocks.append([f"\tchain {name} {{", *(f"\t\t{rule}" for rule in state.chains[name]), "\t}"])
    for i, block in enumerate(blocks):
        out += ([""] if i else []) + block
    out.append("}")
    return "\n".join(out) + "\n"


def parse_table(listing: str) -> TableState:
    """A `nft list table` listing (or `render_table` output) as data (pure)."""
    maps: dict[str, list[str]] = {}
    chains: dict[str, list[str]] = {}
    elements: list[str] = []
    body: list[str] | None = None  # the map's or chain's lines being read
    pending: str | None = None  # an `elements = { …` spanning lines, until its closing brace
    in_ports_map = False
    for raw in listing.splitlines():
        line = raw.strip()
        if pending is not None:
            pending += " " + line
        elif line.startswith(("map ", "chain ")) and line.endswith("{"):
            kind, name = line.split()[:2]
            body = (maps if kind == "map" else chains).setdefault(name, [])
            in_ports_map = kind == "map" and name == _MAP
            continue
        elif line == "}" or line.startswith("table ") or not line:
            body = None
            continue
        elif line.startswith("elements = {"):
            pending = line
        elif body is not None:
            body.append(line)
            continue
        if pending is not None and pending.endswith("}"):
            if in_ports_map:
                inner = pending.split("{", 1)[1].rsplit("}", 1)[0]
                elements += [item.strip() for item in inner.split(",") if item.strip()]
            pending = None
    return TableState(
        maps={name: tuple(lines) for name, lines in maps.items()},
        elements=frozenset(elements),
        chains={name: tuple(lines) for name, lines in chains.items()},
    )


def canonical(listing: str) -> str:
    """The listing in `render_table`'s order: nft lists map elements in hash order, chains as created."""
    return format_table(parse_table(listing))


def _port_chain(bp: BoundPort) -> tuple[str, ...]:
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
    return tuple(rules)


def render_replace(table: str) -> str:
    """`nft -f` input that replaces our table with `table` (or removes it when "") in one transaction."""
    lines = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}"]
    return "\n".join(lines) + "\n" + table


def render_update(current: TableState, desired: TableState) -> str:
    """`nft -f` input turning `current` into `desired` in one transaction: per-port map elements and chains
    when the skeleton is intact, else the whole table replaced; "" when they are equal (pure)."""
    if current == desired:
        return ""
    if not desired.exists or not current.exists or current.skeleton() != desired.skeleton():
        return render_replace(format_table(desired))
    where = f"{FAMILY} {TABLE}"
    added = [name for name in sorted(desired.chains) if name not in current.chains]
    changed = [
        name
        for name in sorted(desired.chains)
        if name in current.chains and current.chains[name] != desired.chains[name]
    ]
    removed = sorted(set(current.chains) - set(desired.chains))
    lines = [f"add chain {where} {name}" for name in added]
    lines += [f"flush chain {where} {name}" for name in changed]
    lines += [f"add rule {where} {name} {rule}" for name in added + changed for rule in desired.chains[name]]
    lines += [
        f"delete element {where} {_MAP} {{ {item.split(' : ')[0]} }}"
        for item in sorted(current.elements - desired.elements)
    ]
    lines += [
        f"add element {where} {_MAP} {{ {item} }}" for item in sorted(desired.elements - current.elements)
    ]
    lines += [
        line for name in removed for line in (f"flush chain {where} {name}", f"delete chain {where} {name}")
    ]
    return "".join(line + "\n" for line in lines)


def read_table() -> str:
    """Our table as the kernel lists it; "" if it does not exist."""
    listed = proc.run(["nft", "list", "tables", FAMILY])
    if f"table {FAMILY} {TABLE}" not in listed.splitlines():
        return ""
    return proc.run(["nft", "list", "table", FAMILY, TABLE])


class Table:
    """Our table in the kernel of this namespace, changed port by port.

    Like the iptables tables (`firewall`), it trusts what it last wrote for `KERNEL_READ_EVERY_S` rather
    than listing the table on every sync; after that the next sync lists it again and repairs any drift. An
    update that fails against the trusted state (a chain deleted behind our back) is redone from the kernel's.
    """

    def __init__(self) -> None:
        self._known: TableState | None = None
        self._known_at = 0.0
        self._verified = False  # the kernel was read back once after a write (spelling check)

    def read(self) -> TableState:
        return parse_table(read_table())

    def sync(self, desired_text: str) -> bool:
        """Make the kernel's table exactly `desired_text` (`render_table` output); False if it already was."""
        desired = parse_table(desired_text)
        fresh = self._known is None or time.monotonic() - self._known_at > KERNEL_READ_EVERY_S
        current = self.read() if fresh or self._known is None else self._known
        if fresh:
            self._known, self._known_at = current, time.monotonic()
        update = render_update(current, desired)
        if not update:
            return False
        try:
            proc.run(["nft", "-f", "-"], stdin=update)
        except NetworkError:
            if fresh:
                raise
            current = self.read()
            proc.run(["nft", "-f", "-"], stdin=render_update(current, desired))
        self._known = desired
        if not self._verified:
            self._verified = True
            after = self.read()
            if after != desired:
                # A rule rendered differently from nft's own spelling would be rewritten on every sync: say so.
                log.warning("nft table %s reads back differently:\n%s", TABLE, format_table(after))
        return True

    def forget(self) -> None:
        self._known = None

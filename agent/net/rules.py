"""Security groups rendered as iptables rules and ipsets: pure functions, no I/O.

Layout of the filter table (all bridged traffic of the host namespace passes FORWARD once per output port):

    FORWARD       -m physdev --physdev-is-bridged -j lc-FORWARD      (the only rule outside our chains)
    lc-FORWARD    frame from a tap -> lc-EGRESS; frame to a tap -> lc-INGRESS; else ACCEPT if from a tap
    lc-EGRESS     dispatch on --physdev-in  <tap>: goto lco-<port>; unknown tap: DROP
    lc-INGRESS    dispatch on --physdev-out <tap>: goto lci-<port>; unknown tap: DROP
    lco-<port>    from the guest: MAC/IP anti-spoofing, conntrack, DHCP, then a jump to each group's
                  lcge-<group>; DROP if none let the frame out
    lci-<port>    to the guest: conntrack, DHCP replies, then a jump to each group's lcgi-<group>; DROP
    lcge-<group>  the group's egress rules, each `-j lc-EGRESS-OK`
    lcgi-<group>  the group's ingress rules, each `-j ACCEPT`
    lc-EGRESS-OK  the sender's groups let the frame out: to a tap -> lc-INGRESS (the receiver's check);
                  else ACCEPT

A group's rules live once in its own chains however many ports use it, so the kernel holds about
ports x 15 + rules (not ports x rules), a new port adds only its own chains and dispatch lines, and a rule
change rewrites one group chain. Several groups on a port combine as a union without packet marks: a rule
that matches ends the frame's evaluation (ACCEPT, or the receiver's check, which always ends in ACCEPT or
DROP), so falling off a group chain just tries the port's next group. A frame between two guests is checked
by the sender's egress *and* the receiver's ingress: lco- chains RETURN what their prelude allows
(established flows, DHCP) to lc-FORWARD, which then runs the receiver's check; `-g` in the dispatch chains
makes that RETURN go straight back to lc-FORWARD. Anti-spoofing comes before the conntrack shortcut: otherwise
a guest could inject packets with a neighbour's address into that neighbour's established flows.

Rules are written exactly as `iptables-save` prints them, so the rendered state can be compared with the
kernel's and applying an unchanged state is a no-op.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.errors import NetworkError
from agent.net import antispoof, names
from agent.net.ports import BoundPort
from agent.schemas import RuleSpec, SecurityGroupSpec

log = logging.getLogger(__name__)

FORWARD_JUMP = f"-A FORWARD -m physdev --physdev-is-bridged -j {names.FORWARD_CHAIN}"
_TAPS = names.TAP_PREFIX + "+"
_PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp"}
_ANY_PROTOCOL = {None, "", "any", "-1"}
_SET_TYPE = "hash:ip family inet"
# A chain this long or longer whose change is a few lines gets `-D`/`-I` edits instead of being refilled.
_EDIT_MIN_LINES = 8


@dataclass(frozen=True)
class Ruleset:
    """What labcloud wants in the kernel: chains (name -> rule lines) and ipsets (name -> member IPs)."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sets: dict[str, frozenset[str]] = field(default_factory=dict)
    chains6: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ip6tables filter table
    bridge: str = ""  # the nft anti-spoofing table, as `nft list table` prints it (`antispoof`)


def render_ruleset(ports: Sequence[BoundPort], groups: Sequence[SecurityGroupSpec]) -> Ruleset:
    """The whole labcloud filter state for exactly these ports."""
    by_id = {group.id: group for group in groups}
    bound = sorted(ports, key=lambda bp: bp.tap)
    fwd, from_tap, to_tap = names.FORWARD_CHAIN, f"--physdev-in {_TAPS}", f"--physdev-out {_TAPS}"
    ok = names.EGRESS_ALLOWED_CHAIN
    chains: dict[str, tuple[str, ...]] = {
        fwd: (
            f"-A {fwd} -m physdev {from_tap} --physdev-is-bridged -j {names.EGRESS_DISPATCH_CHAIN}",
            f"-A {fwd} -m physdev {to_tap} --physdev-is-bridged -j {names.INGRESS_DISPATCH_CHAIN}",
            f"-A {fwd} -m physdev {from_tap} --physdev-is-bridged -j ACCEPT",
        ),
        names.EGRESS_DISPATCH_CHAIN: _dispatch(bound, egress=True),
        names.INGRESS_DISPATCH_CHAIN: _dispatch(bound, egress=False),
        ok: (
            f"-A {ok} -m physdev {to_tap} --physdev-is-bridged -j {names.INGRESS_DISPATCH_CHAIN}",
            f"-A {ok} -j ACCEPT",
        ),
    }
    used: list[str] = []  # groups some port is in and the controller sent, in first-use order
    for bp in bound:
        port_groups = _port_groups(bp, by_id)
        used += [gid for gid in port_groups if gid not in used]
        chains[names.egress_chain(bp.port.id)] = _egress_chain(bp, port_groups)
        chains[names.ingress_chain(bp.port.id)] = _ingress_chain(bp, port_groups)
    remote_groups: set[str] = set()
    for gid in sorted(used):
        group_rules = [rule for rule in by_id[gid].rules if _applies(rule)]
        remote_groups.update(rule.remote_group_id for rule in group_rules if rule.remote_group_id)
        chains[names.group_egress_chain(gid)] = _group_chain(
            names.group_egress_chain(gid), group_rules, "egress"
        )
        chains[names.group_ingress_chain(gid)] = _group_chain(
            names.group_ingress_chain(gid), group_rules, "ingress"
        )
    sets = {names.group_set(gid): _members(gid, by_id) for gid in sorted(remote_groups)}
    return Ruleset(
        chains=chains, sets=sets, chains6=render_ipv6_chains(), bridge=antispoof.render_table(bound)
    )


def render_ipv6_chains() -> dict[str, tuple[str, ...]]:
    """VPCs are IPv4-only: drop all bridged IPv6 to and from guests.

    Without this, guests would reach each other over IPv6 link-local addresses past every security group.
    """
    fwd = names.FORWARD_CHAIN
    return {
        fwd: (
            f"-A {fwd} -m physdev --physdev-in {_TAPS} --physdev-is-bridged -j DROP",
            f"-A {fwd} -m physdev --physdev-out {_TAPS} --physdev-is-bridged -j DROP",
        )
    }


def _dispatch(bound: Sequence[BoundPort], *, egress: bool) -> tuple[str, ...]:
    chain = names.EGRESS_DISPATCH_CHAIN if egress else names.INGRESS_DISPATCH_CHAIN
    side = "--physdev-in" if egress else "--physdev-out"
    lines = []
    for bp in bound:
        target = names.egress_chain(bp.port.id) if egress else names.ingress_chain(bp.port.id)
        lines.append(f"-A {chain} -m physdev {side} {bp.tap} --physdev-is-bridged -g {target}")
    lines.append(f"-A {chain} -j DROP")
    return tuple(lines)


def _port_groups(bp: BoundPort, by_id: Mapping[str, SecurityGroupSpec]) -> list[str]:
    """The port's groups in its order, once each; a group the controller did not send allows nothing."""
    found: list[str] = []
    for gid in bp.port.security_group_ids:
        if gid not in by_id:
            log.warning("security group %s is not in the synced groups; it allows nothing", gid)
        elif gid not in found:
            found.append(gid)
    return found


def _applies(rule: RuleSpec) -> bool:
    """Only IPv4 rules become iptables rules."""
    if rule.ethertype != "IPv4":
        return False
    return rule.remote_ip_prefix is None or _remote_network(rule).version == 4


def _remote_network(rule: RuleSpec) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(rule.remote_ip_prefix or "", strict=False)
    except ValueError as exc:
        raise NetworkError(f"security group rule {rule.id}: bad remote_ip_prefix: {exc}") from exc


def _egress_chain(bp: BoundPort, groups: Iterable[str]) -> tuple[str, ...]:
    chain = names.egress_chain(bp.port.id)
    ip = _host(bp.port.ip)
    lines = [
        f"-A {chain} -m mac ! --mac-source {bp.port.mac.lower()} -j DROP",
        # DHCP DISCOVER/REQUEST before the guest has an address.
        f"-A {chain} -s 0.0.0.0/32 -p udp -m udp --sport 68 --dport 67 -j RETURN",
        f"-A {chain} ! -s {ip} -j DROP",
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {chain} -m conntrack --ctstate INVALID -j DROP",
        # A guest may renew its lease but never act as a DHCP server for its neighbours.
        f"-A {chain} -p udp -m udp --sport 68 --dport 67 -j RETURN",
        f"-A {chain} -p udp -m udp --sport 67 --dport 68 -j DROP",
    ]
    lines += [f"-A {chain} -j {names.group_egress_chain(gid)}" for gid in groups]
    lines.append(f"-A {chain} -j DROP")
    return tuple(lines)


def _ingress_chain(bp: BoundPort, groups: Iterable[str]) -> tuple[str, ...]:
    chain = names.ingress_chain(bp.port.id)
    lines = [
        f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {chain} -m conntrack --ctstate INVALID -j DROP",
        f"-A {chain} -p udp -m udp --sport 67 --dport 68 -j ACCEPT",
    ]
    lines += [f"-A {chain} -j {names.group_ingress_chain(gid)}" for gid in groups]
    lines.append(f"-A {chain} -j DROP")
    return tuple(lines)


def _group_chain(chain: str, rules: Iterable[RuleSpec], direction: str) -> tuple[str, ...]:
    """One group's rules of one direction, in order, without duplicates; falling off the end tries the
    port's next group."""
    lines: list[str] = []
    for rule in rules:
        if rule.direction != direction:
            continue
        line = f"-A {chain} {render_rule(rule)}"
        if line not in lines:
            lines.append(line)
    return tuple(lines)


def render_rule(rule: RuleSpec) -> str:
    """The match and target of one IPv4 security-group rule, in iptables-save's order (pure)."""
    ingress = rule.direction == "ingress"
    parts: list[str] = []
    if rule.remote_ip_prefix:
        net = _remote_network(rule)
        if net.prefixlen:
            parts += ["-s" if ingress else "-d", str(net)]
    protocol = _protocol(rule)
    if protocol:
        parts += ["-p", protocol]
    if protocol in ("tcp", "udp"):
        ports = _port_range(rule)
        if ports:
            parts += ["-m", protocol, "--dport", ports]
    elif protocol == "icmp" and rule.port_range_min is not None:
        icmp = str(rule.port_range_min)
        if rule.port_range_max is not None:
            icmp += f"/{rule.port_range_max}"
        parts += ["-m", "icmp", "--icmp-type", icmp]
    if rule.remote_group_id:
        parts += [
            "-m",
            "set",
            "--match-set",
            names.group_set(rule.remote_group_id),
            "src" if ingress else "dst",
        ]
    # Ingress is the last check of a frame; egress goes on to the receiver's (see the module docstring).
    parts += ["-j", "ACCEPT" if ingress else names.EGRESS_ALLOWED_CHAIN]
    return " ".join(parts)


def _protocol(rule: RuleSpec) -> str | None:
    value = rule.protocol.lower() if rule.protocol else rule.protocol
    if value in _ANY_PROTOCOL:
        return None
    if value not in _PROTOCOLS:
        raise NetworkError(f"security group rule {rule.id}: protocol {rule.protocol!r} is not supported")
    return _PROTOCOLS[value]


def _port_range(rule: RuleSpec) -> str | None:
    low, high = rule.port_range_min, rule.port_range_max
    if low is None and high is None:
        return None
    low = 0 if low is None else low
    high = low if high is None else high
    if not 0 <= low <= high <= 65535:
        raise NetworkError(f"security group rule {rule.id}: bad port range {low}-{high}")
    if (low, high) == (0, 65535):
        return None  # iptables-save drops a full range
    return str(low) if low == high else f"{low}:{high}"


def _host(ip: str) -> str:
    try:
        return f"{ipaddress.IPv4Address(ip)}/32"
    except ValueError as exc:
        raise NetworkError(f"port address: {exc}") from exc


def _members(group_id: str, by_id: Mapping[str, SecurityGroupSpec]) -> frozenset[str]:
    group = by_id.get(group_id)
    if group is None:
        log.warning("remote security group %s is not in the synced groups; its ipset stays empty", group_id)
        return frozenset()
    try:
        addresses = [ipaddress.ip_address(ip) for ip in group.member_ips]
    except ValueError as exc:
        raise NetworkError(f"security group {group_id}: bad member address: {exc}") from exc
    return frozenset(str(addr) for addr in addresses if addr.version == 4)


# iptables-restore / iptables-save


@dataclass(frozen=True)
class FilterState:
    """The labcloud-relevant part of the kernel's filter table."""

    chains: dict[str, tuple[str, ...]]  # our chains
    forward: tuple[str, ...]  # every rule of the built-in FORWARD chain, in order

    @property
    def jumps(self) -> int:
        return self.forward.count(FORWARD_JUMP)

    @property
    def jump_in_place(self) -> bool:
        """Our jump is FORWARD's first rule, and the only one: nobody else's ACCEPT can come before it."""
        return self.forward[:1] == (FORWARD_JUMP,) and self.jumps == 1


def parse_iptables_save(text: str) -> FilterState:
    """Our chains and the FORWARD chain from `iptables-save -t filter` (or ip6tables-save) output."""
    chains: dict[str, list[str]] = {}
    forward: list[str] = []
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        if table != "filter":
            continue
        if line.startswith(":"):
            chain = line[1:].split()[0]
            if names.is_owned_chain(chain):
                chains.setdefault(chain, [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            if names.is_owned_chain(chain):
                chains.setdefault(chain, []).append(line)
            elif chain == "FORWARD":
                forward.append(line)
    return FilterState(
        chains={chain: tuple(lines) for chain, lines in chains.items()}, forward=tuple(forward)
    )


def render_restore(desired: Mapping[str, Sequence[str]], current: FilterState) -> str:
    """`iptables-restore --noflush` input that turns `current` into `desired` in one transaction.

    Only chains that differ are mentioned (incremental): a long chain that differs by a few lines (a dispatch
    chain gaining a port) gets `-D`/`-I` edits, any other changed chain is declared, which flushes or creates
    it, and refilled. Chains no longer wanted are emptied the same way, then deleted. Outside our chains only
    the FORWARD jump is touched: it is moved back to the top if something was inserted before it. An empty
    `desired` removes everything.
    """
    changed = [chain for chain in desired if current.chains.get(chain) != tuple(desired[chain])]
    stale = set(current.chains) - set(desired)
    edits = {
        chain: found
        for chain in changed
        if chain in current.chains
        and (found := _edits(chain, current.chains[chain], tuple(desired[chain]))) is not None
    }
    lines = ["*filter"]
    lines += [f":{chain} - [0:0]" for chain in sorted((set(changed) - set(edits)) | stale)]
    jump_rule = FORWARD_JUMP.removeprefix("-A FORWARD ")
    if not desired or not current.jump_in_place:
        lines += [f"-D FORWARD {jump_rule}"] * current.jumps
        if desired:
            lines.append(f"-I FORWARD 1 {jump_rule}")
    for chain in changed:
        lines += edits[chain] if chain in edits else desired[chain]
    lines += [f"-X {chain}" for chain in sorted(stale)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _edits(chain: str, current: tuple[str, ...], desired: tuple[str, ...]) -> list[str] | None:
    """`-D`/`-I` lines turning `current` into `desired`, or None when refilling the chain is simpler.

    Deletions name the rule (identical rules are interchangeable, so deleting the first is right); insertions
    then go in ascending order of their final position, so every line before one is already in place.
    """
    if len(desired) < _EDIT_MIN_LINES:
        return None
    deleted: list[str] = []
    inserted: list[int] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=current, b=desired, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            deleted += current[i1:i2]
        if tag in ("insert", "replace"):
            inserted += range(j1, j2)
    if len(deleted) + len(inserted) > len(desired) // 4 or any(
        len(line.split(" ", 2)) < 3 for line in deleted
    ):
        return None
    out = [f"-D {chain} {line.split(' ', 2)[2]}" for line in deleted]
    out += [f"-I {chain} {j + 1} {desired[j].split(' ', 2)[2]}" for j in inserted]
    return out


# ipset


def parse_ipset_save(text: str) -> dict[str, frozenset[str]]:
    """Our ipsets and their members from `ipset save` output."""
    sets: dict[str, set[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "create" and names.is_owned_set(words[1]):
            sets.setdefault(words[1], set())
        elif len(words) >= 3 and words[0] == "add" and names.is_owned_set(words[1]):
            sets.setdefault(words[1], set()).add(words[2])
    return {name: frozenset(members) for name, members in sets.items()}


def render_ipset_update(desired: Mapping[str, frozenset[str]], current: Mapping[str, frozenset[str]]) -> str:
    """`ipset restore` input creating missing sets and swapping new members into changed ones."""
    lines: list[str] = []
    for name in sorted(desired):
        members = sorted(desired[name], key=ipaddress.IPv4Address)
        if name not in current:
            lines.append(f"create {name} {_SET_TYPE}")
            lines += [f"add {name} {ip}" for ip in members]
        elif current[name] != desired[name]:
            staging = names.staging_set(name)
            lines += [f"create {staging} {_SET_TYPE} -exist", f"flush {staging}"]
            lines += [f"add {staging} {ip}" for ip in members]
            lines += [f"swap {staging} {name}", f"destroy {staging}"]
    return "".join(line + "\n" for line in lines)


def render_ipset_destroy(names_: Iterable[str]) -> str:
    return "".join(f"destroy {name}\n" for name in sorted(names_))

"""Layer-2 anti-spoofing: the rendered nft table (golden), the kernel's listing as the oracle, real ARP frames."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from agent.net import antispoof, rules
from agent.net.firewall import Firewall
from agent.net.names import tap_name
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec

from .arp_frames import BROADCAST, REPLY, REQUEST, Sniffer, arp_frame, send_frames
from .helpers import Guest, Sandbox, wait_until

GOLDEN = Path(__file__).parent / "golden"
VPC = "0a1b2c3d-0000-4000-8000-000000000001"
SUB = "5b000000-0000-4000-8000-000000000001"
SG = "de000000-0000-4000-8000-000000000001"
APP_PORT = 2222


def _port(n: int, groups: list[str] | None = None) -> PortSpec:
    return PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"FA:16:3E:00:00:0{n}",
        ip=f"10.20.1.{10 + n}",
        subnet_id=SUB,
        vpc_id=VPC,
        security_group_ids=groups or [],
    )


def _bound(port: PortSpec) -> BoundPort:
    return BoundPort(port=port, tap=tap_name(port.id), hostname="vm")


# pure


def test_golden_table(request: pytest.FixtureRequest) -> None:
    text = antispoof.render_table([_bound(_port(n)) for n in (3, 1, 2)])
    path = GOLDEN / "antispoof.nft"
    if request.config.getoption("--update-goldens", default=False) or os.environ.get(
        "LABCLOUD_UPDATE_GOLDENS"
    ):
        path.write_text(text)
    assert text == path.read_text()


def test_no_ports_means_no_table_and_the_replace_script_removes_it() -> None:
    assert antispoof.render_table([]) == ""
    assert antispoof.render_replace("") == "table bridge lc-antispoof {}\ndelete table bridge lc-antispoof\n"


def test_the_ruleset_carries_the_table() -> None:
    ports = [_bound(_port(1)), _bound(_port(2))]
    assert rules.render_ruleset(ports, []).bridge == antispoof.render_table(ports)


# the kernel


@pytest.mark.netns
def test_the_kernel_lists_exactly_what_was_rendered_and_tampering_is_repaired(sandbox: Sandbox) -> None:
    ports = [_bound(_port(n)) for n in range(1, 10)]
    desired = rules.render_ruleset(ports, [])
    assert sandbox.call(sandbox.host, Firewall().apply, desired) is True
    listed = sandbox.sh(sandbox.host, "nft", "list", "table", "bridge", "lc-antispoof")
    assert antispoof.canonical(listed) == desired.bridge
    assert sandbox.call(sandbox.host, Firewall().apply, desired) is False  # unchanged: nothing written

    chain = antispoof.port_chain(ports[0].port.id)
    sandbox.sh(sandbox.host, "nft", "flush", "chain", "bridge", "lc-antispoof", chain)
    assert sandbox.call(sandbox.host, Firewall().apply, desired) is True
    sandbox.sh(sandbox.host, "nft", "add", "rule", "bridge", "lc-antispoof", chain, "accept")
    assert sandbox.call(sandbox.host, Firewall().apply, desired) is True
    sandbox.sh(sandbox.host, "nft", "delete", "table", "bridge", "lc-antispoof")
    assert sandbox.call(sandbox.host, Firewall().apply, desired) is True
    listed = sandbox.sh(sandbox.host, "nft", "list", "table", "bridge", "lc-antispoof")
    assert antispoof.canonical(listed) == desired.bridge

    sandbox.call(sandbox.host, Firewall().teardown)
    assert "lc-antispoof" not in sandbox.sh(sandbox.host, "nft", "list", "tables")


# real frames


def _spec() -> NetworkSpec:
    return NetworkSpec(
        vpc_id=VPC,
        vni=100,
        cidr="10.20.0.0/16",
        subnets=[SubnetSpec(id=SUB, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")],
    )


def _group(members: list[PortSpec]) -> SecurityGroupSpec:
    rules_ = [
        RuleSpec(id="in-self", direction="ingress", remote_group_id=SG),
        RuleSpec(id="out", direction="egress"),
    ]
    return SecurityGroupSpec(id=SG, rules=rules_, member_ips=[p.ip for p in members])


def _neighbour_mac(box: Sandbox, ns: str, ip: str) -> str | None:
    for entry in box.ip_json(ns, "neigh", "show", "to", ip, "dev", "eth0"):
        return str(entry.get("lladdr")) if entry.get("lladdr") else None
    return None


def _sent(box: Sandbox, attacker: Guest, observer: Guest, **arp: str | int) -> list[tuple[int, str, str]]:
    """Send one ARP frame from `attacker` (three times) and return what `observer` received carrying the same
    sender MAC and IP (the real owner of an address may ARP at the same time)."""
    sniffer = Sniffer(observer.ns)
    try:
        frame = arp_frame(**arp)  # type: ignore[arg-type]
        for _ in range(3):
            box.call(attacker.ns, send_frames, "eth0", [frame])
            time.sleep(0.3)
        seen = sniffer.stop()
    finally:
        sniffer.kill()
    claim = (arp["sender_mac"], arp["sender_ip"])
    return [(s.op, s.sender_mac, s.sender_ip) for s in seen if (s.sender_mac, s.sender_ip) == claim]


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (udhcpc) from apt")
def test_a_guest_cannot_claim_another_address_or_mac_over_arp(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", _spec())
    ports = [_port(n, [SG]) for n in (1, 2, 3)]
    g1, g2, g3 = (sandbox.add_guest(p.model_copy(update={"mac": p.mac.lower()})) for p in ports)
    groups = [_group(ports)]
    sync_ports = [BoundPort(port=g.port, tap=g.tap, hostname="vm") for g in (g1, g2, g3)]
    sandbox.net("sync_ports", sync_ports, groups)
    for guest in (g1, g2, g3):
        sandbox.sh(guest.ns, "ip", "addr", "add", f"{guest.port.ip}/24", "dev", "eth0")
    sandbox.listen(g2.ns, APP_PORT)
    assert sandbox.probe(g3.ns, g2.port.ip, APP_PORT) == "ok"  # g3 now has g2 in its neighbour table
    assert _neighbour_mac(sandbox, g3.ns, g2.port.ip) == g2.port.mac
    g1mac, g3mac = g1.port.mac, g3.port.mac

    # Control: g1 announcing its own address reaches g3.
    own = _sent(
        sandbox, g1, g3, eth_src=g1mac, eth_dst=BROADCAST, op=REQUEST,
        sender_mac=g1mac, sender_ip=g1.port.ip, target_ip=g1.port.ip,
    )  # fmt: skip
    assert own, "g1's gratuitous ARP for its own address did not reach g3"

    # A reply claiming g2's address (ARP poisoning), gratuitous or aimed at g3: nothing arrives.
    poison = {"eth_src": g1mac, "sender_mac": g1mac, "sender_ip": g2.port.ip, "target_ip": g3.port.ip}
    time.sleep(1.2)  # past the neighbour table's locktime, so that an arriving reply would be taken
    assert _sent(sandbox, g1, g3, eth_dst=g3mac, op=REPLY, **poison) == []
    assert _sent(sandbox, g1, g3, eth_dst=BROADCAST, op=REQUEST, **poison) == []
    assert _neighbour_mac(sandbox, g3.ns, g2.port.ip) == g2.port.mac
    # An ARP frame whose sender MAC is not the port's, and any frame after the guest changed its MAC.
    forged = {"eth_src": g1mac, "sender_mac": "fa:16:3e:00:00:99", "sender_ip": g1.port.ip}
    assert _sent(sandbox, g1, g3, eth_dst=BROADCAST, op=REQUEST, target_ip=g1.port.ip, **forged) == []
    sandbox.sh(g1.ns, "ip", "link", "set", "eth0", "address", "fa:16:3e:00:00:99")
    moved = {"eth_src": "fa:16:3e:00:00:99", "sender_mac": "fa:16:3e:00:00:99", "sender_ip": g1.port.ip}
    assert _sent(sandbox, g1, g3, eth_dst=BROADCAST, op=REQUEST, target_ip=g1.port.ip, **moved) == []
    sandbox.sh(g1.ns, "ip", "link", "set", "eth0", "address", g1mac)
    # A guest that takes another address gets nothing through either (not even its ARP requests).
    sandbox.sh(g1.ns, "ip", "addr", "flush", "dev", "eth0")
    sandbox.sh(g1.ns, "ip", "addr", "add", "10.20.1.50/24", "dev", "eth0")
    assert sandbox.probe(g1.ns, g2.port.ip, APP_PORT) == "timeout"
    sandbox.sh(g1.ns, "ip", "addr", "flush", "dev", "eth0")
    sandbox.sh(g1.ns, "ip", "addr", "add", f"{g1.port.ip}/24", "dev", "eth0")
    assert sandbox.probe(g1.ns, g2.port.ip, APP_PORT) == "ok"

    # Control: without the table the same poisoning works, which is what the table prevents.
    sandbox.sh(sandbox.host, "nft", "delete", "table", "bridge", "lc-antispoof")
    time.sleep(1.2)
    assert _sent(sandbox, g1, g3, eth_dst=g3mac, op=REPLY, **poison) != []
    wait_until(lambda: _neighbour_mac(sandbox, g3.ns, g2.port.ip) == g1mac, "g3's cache to be poisoned")
    sandbox.net("sync_ports", sync_ports, groups)  # what the agent's housekeeping does: the table is back
    assert "lc-antispoof" in sandbox.sh(sandbox.host, "nft", "list", "tables")
    time.sleep(1.2)
    assert _sent(sandbox, g1, g3, eth_dst=g3mac, op=REPLY, **poison) == []


def test_a_listing_in_hash_and_creation_order_is_still_equal() -> None:
    ports = [_bound(_port(n)) for n in (1, 2, 3)]
    text = antispoof.render_table(ports)
    jumps = [f'"{bp.tap}" : jump {antispoof.port_chain(bp.port.id)}' for bp in ports]
    # nft lists a map's elements in hash order and chains in the order they were created.
    listing = (
        "table bridge lc-antispoof {\n\tchain port-7c000002000 {\n\t\tdrop\n\t}\n"
        "\tmap ports {\n\t\ttype ifname : verdict\n"
        f"\t\telements = {{ {jumps[2]},\n\t\t\t     {jumps[0]},\n\t\t\t     {jumps[1]} }}\n\t}}\n}}\n"
    )
    state = antispoof.parse_table(listing)
    assert state.elements == frozenset(jumps)
    assert state.maps == {"ports": ("type ifname : verdict",)}
    assert state.chains == {"port-7c000002000": ("drop",)}
    assert antispoof.parse_table(text) == antispoof.render_state(ports)
    assert antispoof.canonical(text) == text


def test_a_port_added_or_removed_is_one_element_and_one_chain() -> None:
    one, two = _bound(_port(1)), _bound(_port(2))
    before = antispoof.render_state([one])
    after = antispoof.render_state([one, two])
    chain = antispoof.port_chain(two.port.id)
    update = antispoof.render_update(before, after)
    assert update.splitlines()[0] == f"add chain bridge lc-antispoof {chain}"
    assert f'add element bridge lc-antispoof ports {{ "{two.tap}" : jump {chain} }}' in update
    assert "delete" not in update and "table" not in update.replace("lc-antispoof", "")
    assert len(update.splitlines()) == 2 + len(after.chains[chain])
    assert antispoof.render_update(after, before) == (
        f'delete element bridge lc-antispoof ports {{ "{two.tap}" }}\n'
        f"flush chain bridge lc-antispoof {chain}\ndelete chain bridge lc-antispoof {chain}\n"
    )
    assert antispoof.render_update(after, after) == ""


def test_a_damaged_skeleton_or_no_table_replaces_the_whole_table() -> None:
    state = antispoof.render_state([_bound(_port(1))])
    text = antispoof.format_table(state)
    assert antispoof.render_update(antispoof.TableState(), state) == antispoof.render_replace(text)
    broken = antispoof.TableState(maps={}, elements=state.elements, chains=state.chains)
    assert antispoof.render_update(broken, state) == antispoof.render_replace(text)
    assert antispoof.render_update(state, antispoof.TableState()) == antispoof.render_replace("")

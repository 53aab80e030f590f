"""Firewall state changed behind labcloud's back is put back by the agent's housekeeping.

The kernel test tampers with a real host namespace (a chain deleted, a rule slipped into a port chain, an ipset
member removed) and runs what each housekeeping tick runs (a fresh `sync_ports` of the stored ports), with
iptables-save, ipset and real packets as the oracles. The loop test proves the tick calls it.
"""

from __future__ import annotations

import shutil
import threading

import pytest

from agent.main import _start_housekeeping
from agent.net import antispoof, names, rules
from agent.net.ports import BoundPort
from agent.schemas import NetworkSpec, PortSpec, RuleSpec, SecurityGroupSpec, SubnetSpec

from .helpers import Sandbox

VPC = "0a1b2c3d-0000-4000-8000-000000000001"
SUB = "5b000000-0000-4000-8000-000000000001"
SG = "de000000-0000-4000-8000-000000000001"
APP_PORT = 2222


def _port(n: int) -> PortSpec:
    return PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=f"10.20.1.{10 + n}",
        subnet_id=SUB,
        vpc_id=VPC,
        security_group_ids=[SG],
    )


def _state(box: Sandbox) -> tuple[dict[str, tuple[str, ...]], dict[str, frozenset[str]], str]:
    chains = rules.parse_iptables_save(box.sh(box.host, "iptables-save", "-t", "filter")).chains
    sets = rules.parse_ipset_save(box.sh(box.host, "ipset", "save"))
    table = box.sh(box.host, "nft", "list", "table", "bridge", "lc-antispoof", check=False)
    return chains, sets, antispoof.canonical(table)


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox from apt")
def test_chains_rules_and_ipset_members_changed_behind_our_back_are_repaired(sandbox: Sandbox) -> None:
    sandbox.net("ensure_network", NetworkSpec(
        vpc_id=VPC, vni=100, cidr="10.20.0.0/16",
        subnets=[SubnetSpec(id=SUB, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")],
    ))  # fmt: skip
    g1, g2, g3 = (sandbox.add_guest(_port(n)) for n in (1, 2, 3))
    ports = [BoundPort(port=g.port, tap=g.tap, hostname="vm") for g in (g1, g2, g3)]
    in_group = [g1.port.ip, g2.port.ip]  # g3 carries the group's chains but is not listed as a member
    group = SecurityGroupSpec(
        id=SG,
        rules=[
            RuleSpec(id="self", direction="ingress", remote_group_id=SG),
            RuleSpec(id="out", direction="egress"),
        ],
        member_ips=in_group,
    )
    sandbox.net("sync_ports", ports, [group])
    for guest in (g1, g2, g3):
        sandbox.sh(guest.ns, "ip", "addr", "add", f"{guest.port.ip}/24", "dev", "eth0")
    sandbox.listen(g1.ns, APP_PORT)
    good = _state(sandbox)
    desired = rules.render_ruleset(ports, [group])
    assert (good[0], good[1], good[2]) == (desired.chains, desired.sets, desired.bridge)
    assert sandbox.probe(g2.ns, g1.port.ip, APP_PORT) == "ok"
    assert sandbox.probe(g3.ns, g1.port.ip, APP_PORT) == "timeout"

    # 1. Someone opens g1 to everyone with a rule inside its ingress chain: g3 gets in ...
    ingress = names.ingress_chain(g1.port.id)
    sandbox.sh(sandbox.host, "iptables", "-I", ingress, "1", "-j", "RETURN")
    assert sandbox.probe(g3.ns, g1.port.ip, APP_PORT) == "ok"
    # 2. ... removes g2 from the group's ipset ...
    sandbox.sh(sandbox.host, "ipset", "del", names.group_set(SG), g2.port.ip)
    # 3. ... and deletes g2's egress chain (after unhooking it), then the whole anti-spoofing table.
    egress = names.egress_chain(g2.port.id)
    sandbox.sh(sandbox.host, "iptables", "-F", names.EGRESS_DISPATCH_CHAIN)
    sandbox.sh(sandbox.host, "iptables", "-F", egress)
    sandbox.sh(sandbox.host, "iptables", "-X", egress)
    sandbox.sh(sandbox.host, "nft", "delete", "table", "bridge", "lc-antispoof")
    assert _state(sandbox) != good

    # One housekeeping tick later, all is as rendered again, and the packets say so.
    sandbox.net("sync_ports", ports, [group])
    assert _state(sandbox) == good
    assert sandbox.probe(g3.ns, g1.port.ip, APP_PORT) == "timeout"
    assert sandbox.probe(g2.ns, g1.port.ip, APP_PORT) == "ok"


class RecordingAgent:
    """Test double of AgentService: records the housekeeping calls."""

    def __init__(self) -> None:
        self.repaired = threading.Event()

    def collect_idle_networks(self) -> list[str]:
        raise RuntimeError("a failing chore must not stop the others")

    def repair_firewall(self) -> None:
        self.repaired.set()


def test_each_housekeeping_tick_repairs_the_firewall() -> None:
    agent = RecordingAgent()
    stop = _start_housekeeping(agent, every=0.01)  # type: ignore[arg-type]
    try:
        assert agent.repaired.wait(30)
    finally:
        stop.set()

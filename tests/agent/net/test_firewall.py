"""Applying rule sets to a real filter table and real ipsets; iptables-save and ipset are the oracles."""

from __future__ import annotations

import pytest

from agent.net import antispoof, names, proc, rules
from agent.net.firewall import Firewall
from agent.net.names import tap_name
from agent.net.ports import BoundPort
from agent.schemas import PortSpec, RuleSpec, SecurityGroupSpec

from .helpers import Sandbox

pytestmark = pytest.mark.netns

SG = "5e000000-0000-4000-8000-000000000001"
WEB = "3eb00000-0000-4000-8000-000000000002"


def _port(n: int, groups: list[str]) -> BoundPort:
    port = PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"fa:16:3e:00:00:0{n}",
        ip=f"10.20.1.{10 + n}",
        subnet_id="s1",
        vpc_id="v1",
        security_group_ids=groups,
    )
    return BoundPort(port=port, tap=tap_name(port.id), hostname=f"vm{n}")


def _groups(members: list[str]) -> list[SecurityGroupSpec]:
    default = SecurityGroupSpec(
        id=SG,
        rules=[
            RuleSpec(id="a", direction="ingress", remote_group_id=SG),
            RuleSpec(id="b", direction="egress"),
        ],
        member_ips=members,
    )
    web = SecurityGroupSpec(
        id=WEB,
        rules=[
            RuleSpec(id="c", direction="ingress", protocol="tcp", port_range_min=80, port_range_max=80),
            RuleSpec(
                id="d",
                direction="ingress",
                protocol="tcp",
                port_range_min=8000,
                port_range_max=8100,
                remote_ip_prefix="192.0.2.0/24",
            ),
            RuleSpec(id="e", direction="ingress", protocol="icmp", port_range_min=8, port_range_max=0),
            RuleSpec(
                id="f", direction="egress", protocol="udp", port_range_min=53, remote_ip_prefix="10.0.0.2"
            ),
            RuleSpec(id="g", direction="ingress", protocol="udp", remote_group_id=SG),
        ],
    )
    return [default, web]


def _apply(box: Sandbox, ruleset: rules.Ruleset) -> bool:
    return bool(box.call(box.host, Firewall().apply, ruleset))


def _save(box: Sandbox) -> str:
    """iptables-save without its timestamp comments."""
    out = box.sh(box.host, "iptables-save")
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def _members(box: Sandbox, name: str) -> set[str]:
    out = box.sh(box.host, "ipset", "list", name)
    return set(out.split("Members:\n", 1)[1].split())


def test_applying_twice_changes_nothing(sandbox: Sandbox) -> None:
    ruleset = rules.render_ruleset(
        [_port(1, [SG, WEB]), _port(2, [SG]), _port(3, [])], _groups(["10.20.1.11"])
    )
    assert _apply(sandbox, ruleset) is True
    saved, sets = _save(sandbox), sandbox.sh(sandbox.host, "ipset", "list")

    assert _apply(sandbox, ruleset) is False
    assert _save(sandbox) == saved
    assert sandbox.sh(sandbox.host, "ipset", "list") == sets  # not even recreated (same initval)


def test_the_kernel_reads_back_exactly_what_was_rendered(sandbox: Sandbox) -> None:
    ruleset = rules.render_ruleset(
        [_port(1, [SG, WEB]), _port(2, [SG]), _port(3, [])], _groups(["10.20.1.11"])
    )
    _apply(sandbox, ruleset)
    state = rules.parse_iptables_save(sandbox.sh(sandbox.host, "iptables-save", "-t", "filter"))
    assert state.chains == ruleset.chains
    assert state.jump_in_place
    assert _save(sandbox).count("-j lc-FORWARD") == 1
    assert _members(sandbox, "lcg-5e000000000") == {"10.20.1.11"}


def test_removed_ports_and_groups_leave_no_chains_or_sets(sandbox: Sandbox) -> None:
    _apply(sandbox, rules.render_ruleset([_port(1, [SG, WEB]), _port(2, [SG])], _groups(["10.20.1.11"])))
    _apply(sandbox, rules.render_ruleset([_port(2, [])], _groups([])))
    saved = _save(sandbox)
    assert "lci-7c000001000" not in saved and "lco-7c000001000" not in saved
    assert "lci-7c000002000" in saved
    assert sandbox.sh(sandbox.host, "ipset", "list", "-n") == ""


def test_group_membership_changes_are_swapped_in(sandbox: Sandbox) -> None:
    ports = [_port(1, [SG]), _port(2, [SG])]
    _apply(sandbox, rules.render_ruleset(ports, _groups(["10.20.1.11"])))
    before = _save(sandbox)
    _apply(sandbox, rules.render_ruleset(ports, _groups(["10.20.1.11", "10.20.1.12"])))
    assert _members(sandbox, "lcg-5e000000000") == {"10.20.1.11", "10.20.1.12"}
    assert _save(sandbox) == before  # only the set changed, the rules did not
    assert sandbox.sh(sandbox.host, "ipset", "list", "-n") == "lcg-5e000000000\n"  # no staging set left


def test_other_rules_survive_and_a_duplicate_jump_is_collapsed(sandbox: Sandbox) -> None:
    sandbox.sh(sandbox.host, "iptables", "-N", "OTHER")
    sandbox.sh(sandbox.host, "iptables", "-A", "OTHER", "-p", "tcp", "--dport", "25", "-j", "DROP")
    sandbox.sh(sandbox.host, "iptables", "-A", "FORWARD", "-j", "OTHER")
    ruleset = rules.render_ruleset([_port(1, [SG])], _groups([]))
    _apply(sandbox, ruleset)
    jump = ["-m", "physdev", "--physdev-is-bridged", "-j", "lc-FORWARD"]
    sandbox.sh(sandbox.host, "iptables", "-A", "FORWARD", *jump)

    assert _apply(sandbox, ruleset) is True
    saved = _save(sandbox)
    assert saved.count("-A FORWARD -m physdev --physdev-is-bridged -j lc-FORWARD") == 1
    assert "-A FORWARD -j OTHER" in saved and "-A OTHER -p tcp -m tcp --dport 25 -j DROP" in saved
    # Our jump comes first, so another chain's ACCEPT cannot bypass the security groups.
    forward = [line for line in saved.splitlines() if line.startswith("-A FORWARD")]
    assert forward[0].endswith("-j lc-FORWARD")

    sandbox.call(sandbox.host, Firewall().teardown)
    saved = _save(sandbox)
    assert "lc-" not in saved
    assert "-A FORWARD -j OTHER" in saved and "-A OTHER -p tcp -m tcp --dport 25 -j DROP" in saved


def test_a_long_lived_firewall_writes_only_changed_chains_and_recovers_from_drift(sandbox: Sandbox) -> None:
    """Between kernel reads the firewall trusts what it wrote; a chain deleted behind its back makes the
    incremental restore fail, and the firewall then starts over from the kernel."""
    two = rules.render_ruleset([_port(1, [SG]), _port(2, [SG])], _groups(["10.20.1.11", "10.20.1.12"]))
    three_ports = [_port(1, [SG]), _port(2, [SG]), _port(3, [SG])]
    three = rules.render_ruleset(three_ports, _groups(["10.20.1.11", "10.20.1.12", "10.20.1.13"]))
    deleted = rules.render_ruleset([_port(1, [SG])], _groups(["10.20.1.11"]))

    def scenario() -> list[bool]:
        firewall = Firewall()
        results = [firewall.apply(two)]
        # Drift the cached state does not know about: port 2's ingress chain is gone.
        chain = names.ingress_chain(_port(2, [SG]).port.id)
        for argv in (["-F", names.INGRESS_DISPATCH_CHAIN], ["-F", chain], ["-X", chain]):
            proc.run(["iptables", *argv])
        results.append(firewall.apply(three))  # refills lc-INGRESS with a jump to the missing chain
        results.append(firewall.apply(three))  # nothing to do
        results.append(firewall.apply(deleted))
        return results

    assert sandbox.call(sandbox.host, scenario) == [True, True, False, True]
    saved = rules.parse_iptables_save(sandbox.sh(sandbox.host, "iptables-save", "-t", "filter"))
    assert saved.chains == deleted.chains and saved.jump_in_place


def _handles(family: str, table: str) -> dict[str, list[int]]:
    """Rule handles per chain, as `nft -a` lists them: a chain flushed and refilled gets new handles."""
    found: dict[str, list[int]] = {}
    chain = None
    for line in proc.run(["nft", "-a", "list", "table", family, table]).splitlines():
        words = line.split()
        if words[:1] == ["chain"]:
            chain = words[1]
            found[chain] = []
        elif chain and "# handle" in line and not line.strip().startswith("type "):
            found[chain].append(int(line.rsplit("# handle", 1)[1]))
    return found


def test_a_long_lived_firewall_touches_only_what_changed(sandbox: Sandbox) -> None:
    """A new port: its own chains, one dispatch line each way and one nft map element; every other rule keeps
    its kernel handle (nothing refilled). A rule change: that group's chain only. The kernel, read back,
    holds exactly what was rendered after each step."""
    ports = [_port(n, [SG]) for n in range(1, 10)]
    groups = _groups([bp.port.ip for bp in ports])
    eight, nine = rules.render_ruleset(ports[:8], groups), rules.render_ruleset(ports, groups)
    extra_rule = RuleSpec(id="x", direction="ingress", protocol="tcp", port_range_min=25)
    changed_groups = [groups[0].model_copy(update={"rules": [*groups[0].rules, extra_rule]}), groups[1]]
    changed = rules.render_ruleset(ports, changed_groups)

    def scenario() -> list[tuple[dict[str, list[int]], dict[str, list[int]], bool]]:
        firewall = Firewall()
        steps = []
        for ruleset in (eight, nine, changed, eight):
            firewall.apply(ruleset)
            kernel = rules.parse_iptables_save(proc.run(["iptables-save", "-t", "filter"]))
            table = proc.run(["nft", "list", "table", "bridge", "lc-antispoof"])
            same = kernel.chains == ruleset.chains and antispoof.canonical(table) == ruleset.bridge
            steps.append((_handles("ip", "filter"), _handles("bridge", "lc-antispoof"), same))
        return steps

    steps = sandbox.call(sandbox.host, scenario)
    assert [same for _, _, same in steps] == [True] * 4
    (ip8, br8, _), (ip9, br9, _), (ip_rule, br_rule, _), (ip_back, br_back, _) = steps
    new = ports[8].port.id
    new_chains = {names.ingress_chain(new), names.egress_chain(new)}
    dispatch = {names.INGRESS_DISPATCH_CHAIN, names.EGRESS_DISPATCH_CHAIN}
    for chain, handles in ip8.items():
        if chain in dispatch:
            assert set(handles) < set(ip9[chain]) and len(ip9[chain]) == len(handles) + 1, chain
        else:
            assert ip9[chain] == handles, f"{chain} was rewritten for a new port"
    assert set(ip9) - set(ip8) == new_chains
    # The new port's nft chain and map element came; every other chain kept its rules.
    assert {chain: h for chain, h in br9.items() if chain in br8} == br8
    assert set(br9) - set(br8) == {antispoof.port_chain(new)}

    rewritten = {chain for chain in ip9 if ip_rule[chain] != ip9[chain]}
    assert rewritten == {names.group_ingress_chain(SG)}
    assert br_rule == br9
    # The port gone and the rule undone: its chains deleted, the group chain rewritten, nothing else.
    assert set(ip_back) == set(ip8) and br_back == br8
    rewritten = {chain for chain in ip_back if chain not in dispatch and ip_back[chain] != ip_rule[chain]}
    assert rewritten == {names.group_ingress_chain(SG)}

"""The security-group renderer: golden rule sets, rule spelling, and the restore/ipset texts (pure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import NetworkError
from agent.net import names, rules
from agent.net.names import tap_name
from agent.net.ports import BoundPort
from agent.schemas import PortSpec, RuleSpec, SecurityGroupSpec

GOLDEN = Path(__file__).parent / "golden"
VPC = "0a1b2c3d-0000-4000-8000-000000000001"
SUBNET = "5b000000-0000-4000-8000-000000000001"
DEFAULT_SG = "de000000-0000-4000-8000-000000000001"
WEB_SG = "3eb00000-0000-4000-8000-000000000002"
MISSING_SG = "99000000-0000-4000-8000-000000000009"


def _port(n: int, groups: list[str]) -> BoundPort:
    port = PortSpec(
        id=f"7c00000{n}-0000-4000-8000-00000000000{n}",
        mac=f"FA:16:3E:00:00:0{n}",
        ip=f"10.20.1.{10 + n}",
        subnet_id=SUBNET,
        vpc_id=VPC,
        security_group_ids=groups,
    )
    return BoundPort(port=port, tap=tap_name(port.id), hostname=f"vm{n}")


def _default_group() -> SecurityGroupSpec:
    """Huawei/OpenStack default group: members talk to each other, everything may leave."""
    return SecurityGroupSpec(
        id=DEFAULT_SG,
        rules=[
            RuleSpec(id="d1", direction="ingress", remote_group_id=DEFAULT_SG),
            RuleSpec(id="d2", direction="ingress", ethertype="IPv6", remote_group_id=DEFAULT_SG),
            RuleSpec(id="d3", direction="egress"),
            RuleSpec(id="d4", direction="egress", ethertype="IPv6"),
        ],
        member_ips=["10.20.1.11", "10.20.1.12", "fd00::12"],
    )


def _web_group() -> SecurityGroupSpec:
    return SecurityGroupSpec(
        id=WEB_SG,
        rules=[
            RuleSpec(id="w1", direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22),
            RuleSpec(
                id="w2",
                direction="ingress",
                protocol="tcp",
                port_range_min=80,
                port_range_max=80,
                remote_ip_prefix="0.0.0.0/0",
            ),
            RuleSpec(
                id="w3",
                direction="ingress",
                protocol="tcp",
                port_range_min=8000,
                port_range_max=8100,
                remote_ip_prefix="192.0.2.77/24",
            ),
            RuleSpec(id="w4", direction="ingress", protocol="icmp", port_range_min=8, port_range_max=0),
            RuleSpec(id="w5", direction="ingress", protocol="udp", remote_group_id=DEFAULT_SG),
            RuleSpec(
                id="w6",
                direction="egress",
                protocol="udp",
                port_range_min=53,
                port_range_max=53,
                remote_ip_prefix="10.20.0.2",
            ),
            RuleSpec(id="w7", direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22),
            RuleSpec(
                id="w8",
                direction="ingress",
                ethertype="IPv6",
                protocol="tcp",
                port_range_min=443,
                port_range_max=443,
            ),
        ],
        member_ips=["10.20.1.11"],
    )


def _dump(ruleset: rules.Ruleset) -> str:
    """The texts the firewall would hand to iptables-restore and ipset restore on an empty host."""
    empty = rules.FilterState(chains={}, forward=())
    return (
        rules.render_restore(ruleset.chains, empty)
        + "# ipset restore\n"
        + rules.render_ipset_update(ruleset.sets, {})
        + "# ip6tables-restore\n"
        + rules.render_restore(ruleset.chains6, empty)
    )


def _check_golden(name: str, text: str, request: pytest.FixtureRequest) -> None:
    path = GOLDEN / name
    update = request.config.getoption("--update-goldens", default=False) or os.environ.get(
        "LABCLOUD_UPDATE_GOLDENS"
    )
    if update:
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; rerun with --update-goldens if the change is intended"


def test_golden_default_and_web_groups(request: pytest.FixtureRequest) -> None:
    ports = [
        _port(1, [DEFAULT_SG, WEB_SG]),
        _port(2, [DEFAULT_SG]),
        _port(3, []),  # no groups: DHCP only
        _port(4, [MISSING_SG]),  # a group the controller did not send: allows nothing
    ]
    ruleset = rules.render_ruleset(ports, [_default_group(), _web_group()])
    _check_golden("two_groups.rules", _dump(ruleset), request)


def test_golden_no_ports(request: pytest.FixtureRequest) -> None:
    _check_golden("no_ports.rules", _dump(rules.render_ruleset([], [])), request)


def test_rendering_ignores_the_order_ports_arrive_in() -> None:
    ports = [_port(1, [DEFAULT_SG]), _port(2, [DEFAULT_SG, WEB_SG])]
    groups = [_default_group(), _web_group()]
    assert rules.render_ruleset(ports, groups) == rules.render_ruleset(ports[::-1], groups)


def test_ipsets_hold_the_ipv4_members_of_referenced_groups_only() -> None:
    ruleset = rules.render_ruleset([_port(1, [WEB_SG])], [_default_group(), _web_group()])
    assert ruleset.sets == {"lcg-de000000000": frozenset({"10.20.1.11", "10.20.1.12"})}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (RuleSpec(id="a", direction="ingress"), "-j ACCEPT"),
        (RuleSpec(id="a", direction="ingress", protocol="TCP"), "-p tcp -j ACCEPT"),
        (
            RuleSpec(id="a", direction="ingress", protocol="6", port_range_min=1, port_range_max=65535),
            "-p tcp -m tcp --dport 1:65535 -j ACCEPT",
        ),
        (
            RuleSpec(id="a", direction="ingress", protocol="udp", port_range_min=0, port_range_max=65535),
            "-p udp -j ACCEPT",
        ),
        (
            RuleSpec(id="a", direction="ingress", protocol="udp", port_range_min=53),
            "-p udp -m udp --dport 53 -j ACCEPT",
        ),
        (RuleSpec(id="a", direction="ingress", protocol="icmp"), "-p icmp -j ACCEPT"),
        (
            RuleSpec(id="a", direction="ingress", protocol="icmp", port_range_min=0),
            "-p icmp -m icmp --icmp-type 0 -j ACCEPT",
        ),
        (
            RuleSpec(id="a", direction="egress", protocol="any", remote_ip_prefix="10.1.2.3"),
            "-d 10.1.2.3/32 -j lc-EGRESS-OK",
        ),
        (
            RuleSpec(id="a", direction="egress", remote_group_id="abc"),
            "-m set --match-set lcg-abc dst -j lc-EGRESS-OK",
        ),
        (
            RuleSpec(id="a", direction="ingress", remote_ip_prefix="0.0.0.0/0", remote_group_id="abc"),
            "-m set --match-set lcg-abc src -j ACCEPT",
        ),
    ],
)
def test_rule_spelling_matches_iptables_save(rule: RuleSpec, expected: str) -> None:
    assert rules.render_rule(rule) == expected


@pytest.mark.parametrize(
    "rule",
    [
        RuleSpec(id="a", direction="ingress", protocol="gre"),
        RuleSpec(id="a", direction="ingress", protocol="tcp", port_range_min=90, port_range_max=80),
        RuleSpec(id="a", direction="ingress", protocol="tcp", port_range_min=70000),
        RuleSpec(id="a", direction="ingress", remote_ip_prefix="10.0.0.0/33"),
    ],
)
def test_unrenderable_rules_are_refused(rule: RuleSpec) -> None:
    with pytest.raises(NetworkError):
        rules.render_ruleset([_port(1, ["g"])], [SecurityGroupSpec(id="g", rules=[rule])])


JUMP = "-m physdev --physdev-is-bridged -j lc-FORWARD"


def test_restore_flushes_refills_and_deletes_stale_chains() -> None:
    desired = {"lc-FORWARD": ("-A lc-FORWARD -j ACCEPT",)}
    current = rules.FilterState(
        chains={"lc-FORWARD": (), "lci-old": ("-A lci-old -j DROP",)}, forward=(f"-A FORWARD {JUMP}",)
    )
    assert rules.render_restore(desired, current) == (
        "*filter\n:lc-FORWARD - [0:0]\n:lci-old - [0:0]\n-A lc-FORWARD -j ACCEPT\n-X lci-old\nCOMMIT\n"
    )


@pytest.mark.parametrize(
    "forward",
    [
        (),
        ("-A FORWARD -j OTHER", f"-A FORWARD {JUMP}"),  # pushed down by someone's insert
        (f"-A FORWARD {JUMP}", "-A FORWARD -j OTHER", f"-A FORWARD {JUMP}"),  # twice
    ],
)
def test_restore_puts_exactly_one_jump_first_in_forward(forward: tuple[str, ...]) -> None:
    current = rules.FilterState(chains={}, forward=forward)
    assert not current.jump_in_place
    text = rules.render_restore({"lc-FORWARD": ()}, current)
    assert text.count(f"-D FORWARD {JUMP}\n") == current.jumps
    assert text.count(f"-I FORWARD 1 {JUMP}\n") == 1


def test_restore_leaves_a_jump_in_place_alone_and_teardown_removes_it() -> None:
    current = rules.FilterState(chains={"lc-FORWARD": ()}, forward=(f"-A FORWARD {JUMP}", "-A FORWARD -j X"))
    assert current.jump_in_place
    assert "FORWARD 1" not in rules.render_restore({"lc-FORWARD": ()}, current)
    assert "-D FORWARD" not in rules.render_restore({"lc-FORWARD": ()}, current)
    teardown = rules.render_restore({}, current)
    assert f"-D FORWARD {JUMP}\n" in teardown and "-I FORWARD" not in teardown
    assert "-X lc-FORWARD\n" in teardown


def test_parse_iptables_save_keeps_our_chains_and_the_forward_chain() -> None:
    saved = (
        "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j lc-FORWARD\nCOMMIT\n"
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [5:300]\n:DOCKER - [0:0]\n:lc-FORWARD - [0:0]\n"
        ":lci-x - [0:0]\n"
        f"-A FORWARD {JUMP}\n-A FORWARD -j DOCKER\n"
        "-A lc-FORWARD -j ACCEPT\n-A DOCKER -j RETURN\nCOMMIT\n"
    )
    state = rules.parse_iptables_save(saved)
    assert state.chains == {"lc-FORWARD": ("-A lc-FORWARD -j ACCEPT",), "lci-x": ()}
    assert state.forward == (f"-A FORWARD {JUMP}", "-A FORWARD -j DOCKER")
    assert state.jumps == 1 and state.jump_in_place


def test_ipset_update_creates_swaps_and_leaves_equal_sets_alone() -> None:
    desired = {
        "lcg-new": frozenset({"10.0.0.2", "10.0.0.10"}),
        "lcg-changed": frozenset({"10.0.0.3"}),
        "lcg-same": frozenset({"10.0.0.4"}),
    }
    current = {"lcg-changed": frozenset({"10.0.0.9"}), "lcg-same": frozenset({"10.0.0.4"})}
    assert rules.render_ipset_update(desired, current) == (
        "create lcn-changed hash:ip family inet -exist\n"
        "flush lcn-changed\n"
        "add lcn-changed 10.0.0.3\n"
        "swap lcn-changed lcg-changed\n"
        "destroy lcn-changed\n"
        "create lcg-new hash:ip family inet\n"
        "add lcg-new 10.0.0.2\n"
        "add lcg-new 10.0.0.10\n"
    )
    assert rules.render_ipset_update(current, current) == ""


def test_parse_ipset_save_keeps_only_our_sets() -> None:
    saved = (
        "create lcg-a hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n"
        "add lcg-a 10.0.0.1\n"
        "create other hash:ip family inet\nadd other 10.9.9.9\n"
        "create lcn-a hash:ip family inet\n"
    )
    assert rules.parse_ipset_save(saved) == {"lcg-a": frozenset({"10.0.0.1"}), "lcn-a": frozenset()}


def test_a_rule_change_rewrites_only_its_group_chain() -> None:
    ports = [_port(1, [DEFAULT_SG]), _port(2, [DEFAULT_SG])]
    before = rules.render_ruleset(ports, [_default_group()])
    web = _default_group().model_copy(
        update={"rules": [*_default_group().rules, RuleSpec(id="x", direction="ingress", protocol="udp")]}
    )
    after = rules.render_ruleset(ports, [web])
    current = rules.FilterState(chains=before.chains, forward=(f"-A FORWARD {JUMP}",))
    text = rules.render_restore(after.chains, current)
    chain = names.group_ingress_chain(DEFAULT_SG)
    assert text == (
        f"*filter\n:{chain} - [0:0]\n"
        f"-A {chain} -m set --match-set lcg-de000000000 src -j ACCEPT\n-A {chain} -p udp -j ACCEPT\nCOMMIT\n"
    )
    assert rules.render_restore(before.chains, current) == "*filter\nCOMMIT\n"


def test_the_kernel_holds_each_group_rule_once_however_many_ports_use_it() -> None:
    group = _web_group()
    for count in (1, 9):
        ruleset = rules.render_ruleset([_port(n, [WEB_SG]) for n in range(1, count + 1)], [group])
        group_lines = [
            line for lines in ruleset.chains.values() for line in lines if "--dport 8000:8100" in line
        ]
        assert len(group_lines) == 1


def test_a_new_port_is_its_own_chains_plus_dispatch_lines_inserted_in_place() -> None:
    ports = [_port(n, [DEFAULT_SG]) for n in (1, 2, 4, 5, 6, 7, 8, 9)]
    before = rules.render_ruleset(ports, [_default_group()])
    new = _port(3, [DEFAULT_SG])
    after = rules.render_ruleset([*ports, new], [_default_group()])
    current = rules.FilterState(chains=before.chains, forward=(f"-A FORWARD {JUMP}",))
    text = rules.render_restore(after.chains, current)
    declared = sorted(line[1:].split()[0] for line in text.splitlines() if line.startswith(":"))
    assert declared == sorted([names.ingress_chain(new.port.id), names.egress_chain(new.port.id)])
    tap, ingress = new.tap, names.ingress_chain(new.port.id)
    assert f"-I lc-INGRESS 3 -m physdev --physdev-out {tap} --physdev-is-bridged -g {ingress}\n" in text
    assert sum(line.startswith(("-I ", "-D ")) for line in text.splitlines()) == 2

    # And back: the port's dispatch lines deleted by rule, its chains emptied and deleted, nothing else.
    back = rules.render_restore(
        before.chains, rules.FilterState(chains=after.chains, forward=current.forward)
    )
    assert f"-D lc-INGRESS -m physdev --physdev-out {tap} --physdev-is-bridged -g {ingress}\n" in back
    assert f"-X {ingress}\n" in back and "-A " not in back and "-I " not in back


def test_edits_applied_in_order_give_the_desired_chain() -> None:
    """The -D/-I lines, replayed as iptables applies them, produce exactly the desired chain (pure check)."""
    current = tuple(f"-A c -j x{n}" for n in range(20))
    kept = [line for line in current if line not in ("-A c -j x0", "-A c -j x7")]
    desired = (*kept[:3], "-A c -j z", *kept[3:], "-A c -j y")
    text = rules.render_restore(
        {"c": desired}, rules.FilterState(chains={"c": current}, forward=(f"-A FORWARD {JUMP}",))
    )
    chain = list(current)
    for line in text.splitlines():
        words = line.split(" ", 3)
        if words[0] == "-D":
            chain.remove(f"-A c {line.split(' ', 2)[2]}")
        elif words[0] == "-I":
            chain.insert(int(words[2]) - 1, f"-A c {words[3]}")
    assert tuple(chain) == desired and ":c - [0:0]" not in text

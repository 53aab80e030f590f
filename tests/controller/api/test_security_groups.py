"""Security groups and rules through the official VPC SDK against a real controller."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import pytest
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    DeleteSecurityGroupRequest,
    DeleteSecurityGroupRuleRequest,
    ListSecurityGroupRulesRequest,
    ListSecurityGroupsRequest,
    ShowSecurityGroupRequest,
    ShowSecurityGroupRuleRequest,
)
from sqlmodel import Session, select

from controller.db import session_scope
from controller.models.network import SecurityGroup, SecurityGroupRule
from controller.services import ipam, networks
from tests.controller.api.helpers import create_security_group, create_subnet, create_vpc, expect_error


def add_rule(client: Any, group_id: str, **fields: Any) -> Any:
    option = CreateSecurityGroupRuleOption(security_group_id=group_id, **fields)
    body = CreateSecurityGroupRuleRequestBody(security_group_rule=option)
    return client.create_security_group_rule(CreateSecurityGroupRuleRequest(body=body)).security_group_rule


def _rule_count(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return len(session.exec(select(SecurityGroupRule)).all())


def test_new_group_starts_with_egress_and_ingress_from_itself(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    group = create_security_group(client, "web", vpc_id=vpc.id)
    assert (group.name, group.vpc_id) == ("web", vpc.id)
    rules = {(r.direction, r.remote_group_id, r.protocol, r.ethertype) for r in group.security_group_rules}
    assert rules == {("egress", None, None, "IPv4"), ("ingress", group.id, None, "IPv4")}
    shown = client.show_security_group(ShowSecurityGroupRequest(security_group_id=group.id)).security_group
    assert {r.id for r in shown.security_group_rules} == {r.id for r in group.security_group_rules}


def test_every_project_has_one_undeletable_default_group(api: Any) -> None:
    client = api.vpc()
    first = client.list_security_groups(ListSecurityGroupsRequest()).security_groups
    again = client.list_security_groups(ListSecurityGroupsRequest()).security_groups
    assert [g.name for g in first] == ["default"] and [g.id for g in again] == [first[0].id]
    assert len(first[0].security_group_rules) == 2
    expect_error(
        lambda: client.delete_security_group(DeleteSecurityGroupRequest(security_group_id=first[0].id)),
        409,
        "VPC.0604",
    )
    expect_error(lambda: create_security_group(client, "default"), 400, "VPC.0002")
    other = (
        api.new_project("tenant-b").vpc().list_security_groups(ListSecurityGroupsRequest()).security_groups
    )
    assert [g.name for g in other] == ["default"] and other[0].id != first[0].id


def test_list_filters_by_vpc_and_pages(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    a = create_security_group(client, "a", vpc_id=vpc.id)
    b = create_security_group(client, "b")
    groups = client.list_security_groups(ListSecurityGroupsRequest()).security_groups
    default = next(g for g in groups if g.name == "default")
    assert [
        g.id for g in client.list_security_groups(ListSecurityGroupsRequest(vpc_id=vpc.id)).security_groups
    ] == [a.id]
    page = client.list_security_groups(ListSecurityGroupsRequest(marker=a.id)).security_groups
    assert [g.id for g in page] == [b.id, default.id]
    assert len(client.list_security_groups(ListSecurityGroupsRequest(limit=1)).security_groups) == 1


def test_rule_lifecycle(api: Any) -> None:
    client = api.vpc()
    group = create_security_group(client)
    rule = add_rule(
        client,
        group.id,
        direction="ingress",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_ip_prefix="0.0.0.0/0",
        description="ssh",
    )
    assert (rule.port_range_min, rule.port_range_max, rule.protocol) == (22, 22, "tcp")
    assert (rule.remote_ip_prefix, rule.ethertype, rule.tenant_id) == ("0.0.0.0/0", "IPv4", api.project_id)
    shown = client.show_security_group_rule(ShowSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    assert shown.security_group_rule.description == "ssh"
    listed = client.list_security_group_rules(ListSecurityGroupRulesRequest(security_group_id=group.id))
    assert rule.id in {r.id for r in listed.security_group_rules} and len(listed.security_group_rules) == 3
    by_prefix = client.list_security_group_rules(ListSecurityGroupRulesRequest(remote_ip_prefix="0.0.0.0/0"))
    assert [r.id for r in by_prefix.security_group_rules] == [rule.id]

    client.delete_security_group_rule(DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    expect_error(
        lambda: client.show_security_group_rule(ShowSecurityGroupRuleRequest(security_group_rule_id=rule.id)),
        404,
        "VPC.0702",
    )


def test_port_range_max_defaults_to_min_and_prefix_is_normalized(api: Any) -> None:
    client = api.vpc()
    group = create_security_group(client)
    rule = add_rule(
        client,
        group.id,
        direction="ingress",
        protocol="UDP",
        port_range_min=53,
        remote_ip_prefix="10.1.2.3/8",
    )
    assert (rule.protocol, rule.port_range_min, rule.port_range_max, rule.remote_ip_prefix) == (
        "udp",
        53,
        53,
        "10.0.0.0/8",
    )


BAD_RULES: dict[str, tuple[str, dict[str, Any]]] = {  # case: (a word of the message, fields)
    "direction": ("direction", {"direction": "sideways"}),
    "no direction": ("direction", {"direction": None}),
    "protocol": ("protocol", {"direction": "ingress", "protocol": "gre"}),
    "port zero": (
        "port range",
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 10},
    ),
    "port too high": (
        "port range",
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 1, "port_range_max": 70000},
    ),
    "min above max": (
        "port range",
        {"direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
    ),
    "ports with icmp": ("tcp or udp", {"direction": "ingress", "protocol": "icmp", "port_range_min": 8}),
    "ports without protocol": ("tcp or udp", {"direction": "ingress", "port_range_min": 22}),
    "max without min": ("port_range_min", {"direction": "ingress", "protocol": "tcp", "port_range_max": 22}),
    "port as a string": (
        "port_range_min",
        {"direction": "ingress", "protocol": "tcp", "port_range_min": "22"},
    ),
    "two remotes": (
        "not both",
        {"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "x"},
    ),
    "bad prefix": ("remote_ip_prefix", {"direction": "ingress", "remote_ip_prefix": "10.0.0.0/40"}),
    "v6 prefix on IPv4": ("ethertype", {"direction": "ingress", "remote_ip_prefix": "fd00::/8"}),
    "ethertype": ("ethertype", {"direction": "ingress", "ethertype": "IPv5"}),
}


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_bad_rules_are_refused_and_nothing_is_created(api: Any, case: str) -> None:
    client = api.vpc()
    group = create_security_group(client)
    before = _rule_count(api)
    fragment, fields = BAD_RULES[case]
    exc = expect_error(lambda: add_rule(client, group.id, **fields), 400, "VPC.0002")
    assert fragment in exc.error_msg
    assert _rule_count(api) == before


def test_duplicate_rule_is_409(api: Any) -> None:
    client = api.vpc()
    group = create_security_group(client)
    add_rule(client, group.id, direction="ingress", protocol="tcp", port_range_min=80, port_range_max=80)
    before = _rule_count(api)
    expect_error(
        lambda: add_rule(client, group.id, direction="ingress", protocol="tcp", port_range_min=80),
        409,
        "VPC.0703",
    )
    assert _rule_count(api) == before


def test_unknown_and_foreign_groups_and_rules_are_404(api: Any) -> None:
    client = api.vpc()
    group = create_security_group(client)
    rule = add_rule(client, group.id, direction="ingress", protocol="icmp")
    other = api.new_project("tenant-b").vpc()
    before = _rule_count(api)
    for gid in (group.id, "no-such-group"):
        expect_error(
            lambda g=gid: other.show_security_group(ShowSecurityGroupRequest(security_group_id=g)),
            404,
            "VPC.0602",
        )
        expect_error(
            lambda g=gid: other.delete_security_group(DeleteSecurityGroupRequest(security_group_id=g)),
            404,
            "VPC.0602",
        )
        expect_error(lambda g=gid: add_rule(other, g, direction="ingress"), 404, "VPC.0602")
    expect_error(
        lambda: add_rule(client, group.id, direction="ingress", remote_group_id="no-such-group"),
        404,
        "VPC.0602",
    )
    expect_error(
        lambda: other.show_security_group_rule(ShowSecurityGroupRuleRequest(security_group_rule_id=rule.id)),
        404,
        "VPC.0702",
    )
    expect_error(
        lambda: other.delete_security_group_rule(
            DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id)
        ),
        404,
        "VPC.0702",
    )
    assert rule.id not in {
        r.id for r in other.list_security_group_rules(ListSecurityGroupRulesRequest()).security_group_rules
    }
    assert _rule_count(api) == before
    foreign_vpc = create_vpc(client)
    body = CreateSecurityGroupRequestBody(
        security_group=CreateSecurityGroupOption(name="x", vpc_id=foreign_vpc.id)
    )
    expect_error(lambda: other.create_security_group(CreateSecurityGroupRequest(body=body)), 404, "VPC.0003")


def test_a_group_in_use_by_a_port_cannot_be_deleted(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    subnet = create_subnet(client, vpc.id)
    group = create_security_group(client)
    with session_scope(api.ctx.engine) as session:
        row = networks.get_subnet(session, api.project_id, subnet.id)
        ipam.allocate_port(
            session,
            project_id=api.project_id,
            subnet=row,
            ip_address=None,
            security_group_ids=[group.id],
            server_id="server-1",
        )
    expect_error(
        lambda: client.delete_security_group(DeleteSecurityGroupRequest(security_group_id=group.id)),
        409,
        "VPC.0604",
    )
    with session_scope(api.ctx.engine) as session:
        ipam.release_ports(session, "server-1")
    client.delete_security_group(DeleteSecurityGroupRequest(security_group_id=group.id))
    with Session(api.ctx.engine) as session:
        assert session.get(SecurityGroup, group.id) is None
        assert (
            session.exec(
                select(SecurityGroupRule).where(SecurityGroupRule.security_group_id == group.id)
            ).all()
            == []
        )


def test_a_group_named_by_another_groups_rule_cannot_be_deleted(api: Any) -> None:
    client = api.vpc()
    db = create_security_group(client, "db")
    web = create_security_group(client, "web")
    rule = add_rule(
        client, db.id, direction="ingress", protocol="tcp", port_range_min=5432, remote_group_id=web.id
    )
    expect_error(
        lambda: client.delete_security_group(DeleteSecurityGroupRequest(security_group_id=web.id)),
        409,
        "VPC.0604",
    )
    client.delete_security_group_rule(DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    client.delete_security_group(DeleteSecurityGroupRequest(security_group_id=web.id))


@pytest.fixture
def pushed(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record `controller.services.servers.push_security_groups` calls (that function belongs to the servers
    service; here only the hand-over is checked)."""
    calls: list[list[str]] = []
    try:
        module = importlib.import_module("controller.services.servers")
    except ImportError:
        module = types.ModuleType("controller.services.servers")
        monkeypatch.setitem(sys.modules, "controller.services.servers", module)
    monkeypatch.setattr(
        module, "push_security_groups", lambda ctx, ids: calls.append(list(ids)), raising=False
    )
    return calls


def test_rule_changes_are_pushed_to_agents(api: Any, pushed: list[list[str]]) -> None:
    client = api.vpc()
    group = create_security_group(client)
    rule = add_rule(client, group.id, direction="ingress", protocol="tcp", port_range_min=443)
    client.delete_security_group_rule(DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id))
    assert pushed == [[group.id], [group.id]]


def test_a_failing_push_does_not_fail_the_change(
    api: Any, pushed: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: Any, ids: list[str]) -> None:
        raise ConnectionError("agent down")

    monkeypatch.setattr(sys.modules["controller.services.servers"], "push_security_groups", broken)
    client = api.vpc()
    group = create_security_group(client)
    rule = add_rule(client, group.id, direction="egress", protocol="udp", port_range_min=53)
    assert client.show_security_group_rule(ShowSecurityGroupRuleRequest(security_group_rule_id=rule.id))

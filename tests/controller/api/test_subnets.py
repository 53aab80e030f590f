"""VPC v1 subnet routes through the official VPC SDK against a real controller."""

from __future__ import annotations

from typing import Any

import pytest
from huaweicloudsdkvpc.v2 import (
    CreateSubnetOption,
    CreateSubnetRequest,
    CreateSubnetRequestBody,
    DeleteSubnetRequest,
    ListSubnetsRequest,
    ShowSubnetRequest,
    UpdateSubnetOption,
    UpdateSubnetRequest,
    UpdateSubnetRequestBody,
)
from sqlmodel import Session, select

from controller.db import session_scope
from controller.models.network import Subnet
from controller.services import ipam, networks
from tests.controller.api.helpers import create_subnet, create_vpc, expect_error


def _subnets(api: Any) -> list[Subnet]:
    with Session(api.ctx.engine) as session:
        return list(session.exec(select(Subnet)).all())


def test_create_show_list_update_delete(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client, cidr="10.20.0.0/16")
    subnet = create_subnet(
        client,
        vpc.id,
        name="web",
        cidr="10.20.1.0/24",
        gateway_ip="10.20.1.1",
        primary_dns="10.20.1.2",
        secondary_dns="10.20.1.3",
    )
    assert (subnet.name, subnet.cidr, subnet.gateway_ip, subnet.vpc_id) == (
        "web",
        "10.20.1.0/24",
        "10.20.1.1",
        vpc.id,
    )
    assert subnet.dhcp_enable is True and subnet.status == "ACTIVE"
    assert subnet.neutron_network_id == subnet.neutron_subnet_id == subnet.id
    assert (subnet.primary_dns, subnet.secondary_dns, subnet.dns_list) == (
        "10.20.1.2",
        "10.20.1.3",
        ["10.20.1.2", "10.20.1.3"],
    )
    assert subnet.availability_zone == "lab-1a"

    other_vpc = create_vpc(client, name="other", cidr="10.30.0.0/16")
    other = create_subnet(client, other_vpc.id, cidr="10.30.1.0/24", gateway_ip="10.30.1.1")
    assert {s.id for s in client.list_subnets(ListSubnetsRequest()).subnets} == {subnet.id, other.id}
    assert [s.id for s in client.list_subnets(ListSubnetsRequest(vpc_id=vpc.id)).subnets] == [subnet.id]
    assert client.show_subnet(ShowSubnetRequest(subnet_id=subnet.id)).subnet.cidr == "10.20.1.0/24"

    update = UpdateSubnetRequestBody(
        subnet=UpdateSubnetOption(name="web2", dhcp_enable=False, dns_list=["10.20.1.4"])
    )
    result = client.update_subnet(UpdateSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id, body=update)).subnet
    assert (result.id, result.status) == (subnet.id, "ACTIVE")
    shown = client.show_subnet(ShowSubnetRequest(subnet_id=subnet.id)).subnet
    assert (shown.name, shown.dhcp_enable, shown.primary_dns, shown.secondary_dns) == (
        "web2",
        False,
        "10.20.1.4",
        None,
    )

    client.delete_subnet(DeleteSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id))
    assert [s.id for s in client.list_subnets(ListSubnetsRequest()).subnets] == [other.id]


def test_list_pages_with_limit_and_marker(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    ids = [
        create_subnet(client, vpc.id, name=f"s{i}", cidr=f"10.20.{i}.0/24", gateway_ip=f"10.20.{i}.1").id
        for i in range(3)
    ]
    assert [s.id for s in client.list_subnets(ListSubnetsRequest(limit=2)).subnets] == ids[:2]
    assert [s.id for s in client.list_subnets(ListSubnetsRequest(marker=ids[0])).subnets] == ids[1:]


def test_smallest_subnet_is_a_29(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    assert create_subnet(client, vpc.id, cidr="10.20.9.0/29", gateway_ip="10.20.9.1").cidr == "10.20.9.0/29"
    expect_error(
        lambda: create_subnet(client, vpc.id, name="b", cidr="10.20.9.8/30", gateway_ip="10.20.9.9"),
        400,
        "VPC.0002",
    )


BAD_SUBNETS: dict[str, tuple[str, dict[str, Any]]] = {  # case: (a word of the message, fields)
    "host bits set": ("host bits", {"cidr": "10.20.1.5/24"}),
    "not a cidr": ("Invalid subnet cidr", {"cidr": "10.20.1.0/ab"}),
    "outside the vpc": ("not inside", {"cidr": "10.99.1.0/24", "gateway_ip": "10.99.1.1"}),
    "larger than the vpc": ("not inside", {"cidr": "10.20.0.0/15", "gateway_ip": "10.20.0.1"}),
    "overlapping": ("overlaps", {"cidr": "10.20.1.128/25", "gateway_ip": "10.20.1.129"}),
    "containing another": ("overlaps", {"cidr": "10.20.0.0/22", "gateway_ip": "10.20.0.1"}),
    "gateway outside": ("gateway_ip", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.3.1"}),
    "gateway is the network": ("gateway_ip", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.0"}),
    "gateway is broadcast": ("gateway_ip", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.255"}),
    "gateway not an ip": ("gateway_ip", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.x"}),
    "dhcp_enable as a string": (
        "dhcp_enable",
        {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1", "dhcp_enable": "true"},
    ),
    "bad name": ("name", {"name": "no spaces", "cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1"}),
    "missing gateway": ("gateway_ip", {"cidr": "10.20.2.0/24", "gateway_ip": None}),
    "missing name": ("name", {"name": None, "cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1"}),
    "bad dns": ("DNS", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1", "primary_dns": "dns.example"}),
    "secondary dns only": (
        "primary_dns",
        {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1", "secondary_dns": "10.0.0.2"},
    ),
    "three dns servers": (
        "two DNS",
        {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1", "dns_list": ["10.0.0.2", "10.0.0.3", "10.0.0.4"]},
    ),
    "ipv6": ("IPv6", {"cidr": "10.20.2.0/24", "gateway_ip": "10.20.2.1", "ipv6_enable": True}),
}


@pytest.mark.parametrize("case", list(BAD_SUBNETS))
def test_bad_subnets_are_refused_and_nothing_is_created(api: Any, case: str) -> None:
    client = api.vpc()
    vpc = create_vpc(client, cidr="10.20.0.0/16")
    existing = create_subnet(client, vpc.id, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")
    fragment, bad = BAD_SUBNETS[case]
    fields = {"name": "new", "gateway_ip": "10.20.2.1", **bad}
    option = CreateSubnetOption(vpc_id=vpc.id, **fields)
    request = CreateSubnetRequest(body=CreateSubnetRequestBody(subnet=option))
    exc = expect_error(lambda: client.create_subnet(request), 400, "VPC.0002")
    assert fragment in exc.error_msg
    assert [s.id for s in _subnets(api)] == [existing.id]


def test_unknown_or_foreign_vpc_is_404(api: Any) -> None:
    mine = create_vpc(api.vpc())
    other = api.new_project("tenant-b").vpc()
    for vpc_id in (mine.id, "no-such-vpc"):
        expect_error(lambda v=vpc_id: create_subnet(other, v), 404, "VPC.0003")
    assert _subnets(api) == []


def test_foreign_and_unknown_subnets_are_404(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    subnet = create_subnet(client, vpc.id)
    other = api.new_project("tenant-b").vpc()
    expect_error(lambda: other.show_subnet(ShowSubnetRequest(subnet_id=subnet.id)), 404, "VPC.0202")
    expect_error(lambda: client.show_subnet(ShowSubnetRequest(subnet_id="nope")), 404, "VPC.0202")
    expect_error(
        lambda: other.delete_subnet(DeleteSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id)), 404, "VPC.0003"
    )
    update = UpdateSubnetRequestBody(subnet=UpdateSubnetOption(name="stolen"))
    expect_error(
        lambda: other.update_subnet(UpdateSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id, body=update)),
        404,
        "VPC.0003",
    )
    assert other.list_subnets(ListSubnetsRequest()).subnets == []
    assert client.show_subnet(ShowSubnetRequest(subnet_id=subnet.id)).subnet.name == "subnet-a"


def test_subnet_must_be_addressed_under_its_own_vpc(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    subnet = create_subnet(client, vpc.id)
    elsewhere = create_vpc(client, name="b", cidr="10.40.0.0/16")
    expect_error(
        lambda: client.delete_subnet(DeleteSubnetRequest(vpc_id=elsewhere.id, subnet_id=subnet.id)),
        404,
        "VPC.0202",
    )
    assert [s.id for s in _subnets(api)] == [subnet.id]


def test_a_subnet_with_ports_cannot_be_deleted(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    subnet = create_subnet(client, vpc.id)
    with session_scope(api.ctx.engine) as session:
        row = networks.get_subnet(session, api.project_id, subnet.id)
        ipam.allocate_port(
            session,
            project_id=api.project_id,
            subnet=row,
            ip_address=None,
            security_group_ids=[],
            server_id="server-1",
        )
    expect_error(
        lambda: client.delete_subnet(DeleteSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id)), 409, "VPC.0204"
    )
    with session_scope(api.ctx.engine) as session:
        ipam.release_ports(session, "server-1")
    client.delete_subnet(DeleteSubnetRequest(vpc_id=vpc.id, subnet_id=subnet.id))
    assert _subnets(api) == []

"""VPC v1 routes through the official VPC SDK against a real controller."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from huaweicloudsdkvpc.v2 import (
    CreateVpcOption,
    CreateVpcRequest,
    CreateVpcRequestBody,
    DeleteVpcRequest,
    ListVpcsRequest,
    ShowVpcRequest,
    UpdateVpcOption,
    UpdateVpcRequest,
    UpdateVpcRequestBody,
)
from sqlmodel import Session, select

from controller.models.network import Vpc
from tests.controller.api.helpers import create_subnet, create_vpc, expect_error


def _vpcs(api: Any) -> list[Vpc]:
    with Session(api.ctx.engine) as session:
        return list(session.exec(select(Vpc)).all())


def test_create_show_update_list_delete(api: Any) -> None:
    client = api.vpc()
    body = CreateVpcRequestBody(
        vpc=CreateVpcOption(name="lab-net", cidr="10.20.0.0/16", description="for tests")
    )
    created = client.create_vpc(CreateVpcRequest(body=body)).vpc
    assert (created.name, created.cidr, created.status, created.description) == (
        "lab-net",
        "10.20.0.0/16",
        "OK",
        "for tests",
    )
    assert created.tenant_id == api.project_id
    assert isinstance(created.created_at, datetime) and created.routes == []

    shown = client.show_vpc(ShowVpcRequest(vpc_id=created.id)).vpc
    assert (shown.id, shown.cidr) == (created.id, "10.20.0.0/16")

    update = UpdateVpcRequestBody(vpc=UpdateVpcOption(name="renamed", description="", cidr="10.20.0.0/15"))
    updated = client.update_vpc(UpdateVpcRequest(vpc_id=created.id, body=update)).vpc
    assert (updated.name, updated.cidr, updated.description) == ("renamed", "10.20.0.0/15", "")

    listed = client.list_vpcs(ListVpcsRequest()).vpcs
    assert [v.id for v in listed] == [created.id]

    client.delete_vpc(DeleteVpcRequest(vpc_id=created.id))
    assert client.list_vpcs(ListVpcsRequest()).vpcs == []
    expect_error(lambda: client.show_vpc(ShowVpcRequest(vpc_id=created.id)), 404, "VPC.0003")


def test_defaults_when_name_and_cidr_are_left_out(api: Any) -> None:
    created = api.vpc().create_vpc(CreateVpcRequest(body=CreateVpcRequestBody(vpc=CreateVpcOption()))).vpc
    assert created.cidr == "192.168.0.0/16"
    assert created.name.startswith("vpc-")


def test_list_pages_with_limit_and_marker_and_filters_by_id(api: Any) -> None:
    client = api.vpc()
    ids = [create_vpc(client, name=f"v{i}", cidr=f"10.{i}.0.0/16").id for i in range(3)]
    assert [v.id for v in client.list_vpcs(ListVpcsRequest(limit=2)).vpcs] == ids[:2]
    assert [v.id for v in client.list_vpcs(ListVpcsRequest(limit=2, marker=ids[1])).vpcs] == ids[2:]
    assert [v.id for v in client.list_vpcs(ListVpcsRequest(id=ids[1])).vpcs] == [ids[1]]
    expect_error(lambda: client.list_vpcs(ListVpcsRequest(marker="no-such-vpc")), 400, "VPC.0002")
    expect_error(lambda: client.list_vpcs(ListVpcsRequest(limit=0)), 400, "VPC.0002")


def test_vnis_count_up_and_are_never_reused(api: Any) -> None:
    client = api.vpc()
    first = create_vpc(client, name="a", cidr="10.1.0.0/16")
    second = create_vpc(client, name="b", cidr="10.2.0.0/16")
    client.delete_vpc(DeleteVpcRequest(vpc_id=second.id))
    third = create_vpc(client, name="c", cidr="10.3.0.0/16")
    vnis = {v.id: v.vni for v in _vpcs(api)}
    assert vnis == {first.id: 1, third.id: 3}


@pytest.mark.parametrize(
    "cidr",
    ["10.20.0.1/16", "8.8.0.0/16", "10.0.0.0/25", "192.168.0.0/15", "not-a-cidr", "10.0.0.0/33", "fd00::/64"],
)
def test_bad_cidr_is_refused_and_nothing_is_created(api: Any, cidr: str) -> None:
    body = CreateVpcRequestBody(vpc=CreateVpcOption(name="bad", cidr=cidr))
    expect_error(lambda: api.vpc().create_vpc(CreateVpcRequest(body=body)), 400, "VPC.0002")
    assert _vpcs(api) == []


@pytest.mark.parametrize("name", ["has space", "x" * 65, "semi;colon", ""])
def test_bad_name_is_refused(api: Any, name: str) -> None:
    body = CreateVpcRequestBody(vpc=CreateVpcOption(name=name, cidr="10.0.0.0/16"))
    if name == "":
        # An empty name is the same as none: a generated one.
        assert api.vpc().create_vpc(CreateVpcRequest(body=body)).vpc.name.startswith("vpc-")
        return
    expect_error(lambda: api.vpc().create_vpc(CreateVpcRequest(body=body)), 400, "VPC.0002")
    assert _vpcs(api) == []


def test_a_body_of_the_wrong_shape_is_a_400(api: Any) -> None:
    expect_error(lambda: api.vpc().create_vpc(CreateVpcRequest(body=None)), 400, "VPC.0002")
    body = CreateVpcRequestBody(vpc=CreateVpcOption(name="x", cidr=None, description="<script>"))
    expect_error(lambda: api.vpc().create_vpc(CreateVpcRequest(body=body)), 400, "VPC.0002")
    assert _vpcs(api) == []


def test_unknown_and_foreign_vpcs_are_404(api: Any) -> None:
    mine = create_vpc(api.vpc())
    other = api.new_project("tenant-b").vpc()
    for vpc_id in (mine.id, "00000000-0000-0000-0000-000000000000"):
        expect_error(lambda v=vpc_id: other.show_vpc(ShowVpcRequest(vpc_id=v)), 404, "VPC.0003")
        update = UpdateVpcRequestBody(vpc=UpdateVpcOption(name="stolen"))
        expect_error(
            lambda v=vpc_id, u=update: other.update_vpc(UpdateVpcRequest(vpc_id=v, body=u)), 404, "VPC.0003"
        )
        expect_error(lambda v=vpc_id: other.delete_vpc(DeleteVpcRequest(vpc_id=v)), 404, "VPC.0003")
    assert other.list_vpcs(ListVpcsRequest()).vpcs == []
    assert api.vpc().show_vpc(ShowVpcRequest(vpc_id=mine.id)).vpc.name == "vpc-a"


def test_a_vpc_with_subnets_cannot_be_deleted(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client)
    create_subnet(client, vpc.id)
    expect_error(lambda: client.delete_vpc(DeleteVpcRequest(vpc_id=vpc.id)), 409, "VPC.0103")
    assert client.show_vpc(ShowVpcRequest(vpc_id=vpc.id)).vpc.id == vpc.id


def test_cidr_update_must_keep_every_subnet_inside(api: Any) -> None:
    client = api.vpc()
    vpc = create_vpc(client, cidr="10.20.0.0/16")
    create_subnet(client, vpc.id, cidr="10.20.1.0/24", gateway_ip="10.20.1.1")
    body = UpdateVpcRequestBody(vpc=UpdateVpcOption(cidr="10.30.0.0/16"))
    expect_error(lambda: client.update_vpc(UpdateVpcRequest(vpc_id=vpc.id, body=body)), 400, "VPC.0002")
    assert client.show_vpc(ShowVpcRequest(vpc_id=vpc.id)).vpc.cidr == "10.20.0.0/16"

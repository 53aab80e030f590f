"""Flavors through the official ECS SDK against a real controller (whose router order puts the literal
`/cloudservers/flavors` paths before the servers router's `/cloudservers/{server_id}`)."""

from __future__ import annotations

from typing import Any

from huaweicloudsdkecs.v2 import ListFlavorsRequest, ListResizeFlavorsRequest

from tests.controller.api.helpers import expect_error

EXPECTED = [  # id, vcpus, ram MiB
    ("s6.nano.1", "1", 128),
    ("s6.micro.1", "1", 256),
    ("s6.small.1", "1", 1024),
    ("s6.medium.2", "1", 2048),
    ("s6.large.2", "2", 4096),
    ("s6.xlarge.2", "4", 8192),
]


def test_list_has_the_default_set_with_the_sdk_types(api: Any) -> None:
    flavors = api.ecs().list_flavors(ListFlavorsRequest()).flavors
    assert [(f.id, f.vcpus, f.ram) for f in flavors] == EXPECTED
    small = flavors[0]
    assert (small.name, small.disk, small.swap, small.rxtx_factor) == ("s6.nano.1", "0", "", 1.0)
    assert small.os_flv_disable_ddisabled is False and small.os_flavor_accessis_public is True
    assert small.os_flv_ext_dat_aephemeral == 0 and small.links == []
    specs = small.os_extra_specs
    assert (specs.ecsperformancetype, specs.condoperationstatus, specs.condoperationaz) == (
        "normal",
        "normal",
        "lab-1a(normal)",
    )


def test_filters_by_zone_and_id_and_pages(api: Any) -> None:
    ecs = api.ecs()
    assert len(ecs.list_flavors(ListFlavorsRequest(availability_zone="lab-1a")).flavors) == len(EXPECTED)
    assert ecs.list_flavors(ListFlavorsRequest(availability_zone="elsewhere-9z")).flavors == []
    assert [f.id for f in ecs.list_flavors(ListFlavorsRequest(flavor_id="s6.small.1")).flavors] == [
        "s6.small.1"
    ]
    page = ecs.list_flavors(ListFlavorsRequest(marker="s6.micro.1", limit=2)).flavors
    assert [f.id for f in page] == ["s6.small.1", "s6.medium.2"]
    expect_error(lambda: ecs.list_flavors(ListFlavorsRequest(marker="m1.tiny")), 400, "Ecs.0005")


def test_resize_flavors_leave_out_the_source(api: Any) -> None:
    ecs = api.ecs()
    found = ecs.list_resize_flavors(ListResizeFlavorsRequest(source_flavor_id="s6.nano.1")).flavors
    assert [f.id for f in found] == [fid for fid, _, _ in EXPECTED[1:]]
    assert (
        found[0].vcpus == "1" and found[0].ram == 256 and found[0].extra_specs.ecsperformancetype == "normal"
    )
    by_name = ecs.list_resize_flavors(ListResizeFlavorsRequest(source_flavor_name="s6.xlarge.2")).flavors
    assert "s6.xlarge.2" not in [f.id for f in by_name]

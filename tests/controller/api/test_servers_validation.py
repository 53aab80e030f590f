"""Every rejected create through the official SDK (or a signed raw request where the SDK cannot send the
body): a clear 4xx, and nothing created (servers, ports, jobs and security groups counted before/after)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    PostPaidServerDataVolume,
    PostPaidServerEip,
    PostPaidServerEipBandwidth,
    PostPaidServerNic,
    PostPaidServerPublicip,
    PostPaidServerRootVolume,
    PostPaidServerSecurityGroup,
    PostPaidServerTag,
)
from sqlmodel import Session, func, select

from controller.db import session_scope
from controller.models.image import Image
from controller.models.network import SecurityGroup, Subnet
from controller.services import ipam
from tests.controller.api.helpers import create_subnet, create_vpc, expect_error
from tests.controller.api.server_helpers import Net, counts, create, make_net, raw_request, server


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


def _groups(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(SecurityGroup)).one())


def _nic(net: Net, ip: str | None = None) -> list[PostPaidServerNic]:
    return [PostPaidServerNic(subnet_id=net.subnet_id, ip_address=ip)]


def _image(api: Any, **fields: Any) -> str:
    """A private image of the admin project sharing the seed's file, with other requirements."""
    with session_scope(api.ctx.engine) as session:
        seed = session.exec(select(Image).where(Image.name.startswith("testimg"))).one()  # type: ignore[attr-defined]
        values = {"status": "active", **fields}
        image = Image(
            name="special",
            owner=api.project_id,
            checksum=seed.checksum,
            file_path=seed.file_path,
            size=seed.size,
            **values,
        )
        session.add(image)
    return image.id


Case = Callable[[Any, Net], dict[str, Any]]

# (case id, create-body overrides given (api, net), expected status, expected code, text in the message)
SDK_CASES: list[tuple[str, Case, int, str, str]] = [
    ("unknown flavor", lambda a, n: {"flavor_ref": "x9.huge"}, 404, "Ecs.0038", "x9.huge"),
    ("unknown image", lambda a, n: {"image_ref": "no-such-image"}, 404, "IMG.0027", "no-such-image"),
    ("unknown vpc", lambda a, n: {"vpcid": "no-such-vpc"}, 404, "VPC.0003", "no-such-vpc"),
    ("unknown subnet", lambda a, n: {"nics": [PostPaidServerNic(subnet_id="nope")]}, 404, "VPC.0202", "nope"),
    ("unknown key pair", lambda a, n: {"key_name": "nokey"}, 404, "Ecs.0314", "nokey"),
    (
        "unknown security group",
        lambda a, n: {"security_groups": [PostPaidServerSecurityGroup(id="sg-x")]},
        404,
        "VPC.0602",
        "sg-x",
    ),
    (
        "fixed ip outside the subnet",
        lambda a, n: {"nics": _nic(n, "10.99.0.5")},
        400,
        "Ecs.0005",
        "not inside",
    ),
    ("fixed ip is the gateway", lambda a, n: {"nics": _nic(n, "10.20.1.1")}, 400, "Ecs.0005", "gateway"),
    (
        "fixed ip is the network address",
        lambda a, n: {"nics": _nic(n, "10.20.1.0")},
        400,
        "Ecs.0005",
        "network",
    ),
    (
        "fixed ip is the broadcast address",
        lambda a, n: {"nics": _nic(n, "10.20.1.255")},
        400,
        "Ecs.0005",
        "broadcast",
    ),
    ("fixed ip not an address", lambda a, n: {"nics": _nic(n, "10.20.1.x")}, 400, "Ecs.0005", "10.20.1.x"),
    (
        "fixed ip with count 2",
        lambda a, n: {"nics": _nic(n, "10.20.1.40"), "count": 2},
        400,
        "Ecs.0005",
        "count",
    ),
    ("name too long", lambda a, n: {"name": "n" * 65}, 400, "Ecs.0005", "name"),
    ("name with a space", lambda a, n: {"name": "web server"}, 400, "Ecs.0005", "name"),
    ("name with a slash", lambda a, n: {"name": "a/b"}, 400, "Ecs.0005", "name"),
    (
        "auto rename makes the name too long",
        lambda a, n: {"name": "n" * 60, "count": 2, "is_auto_rename": True},
        400,
        "Ecs.0005",
        "-0001",
    ),
    ("count 0", lambda a, n: {"count": 0}, 400, "Ecs.0005", "count"),
    ("count above the limit", lambda a, n: {"count": 21}, 400, "Ecs.0005", "count"),
    (
        "root volume below the image's min_disk",
        lambda a, n: {"image_ref": _image(a, min_disk=5)},
        400,
        "Ecs.0005",
        "5 GiB",
    ),
    (
        "flavor RAM below the image's min_ram",
        lambda a, n: {"image_ref": _image(a, min_ram=512)},
        400,
        "Ecs.0005",
        "512",
    ),
    ("image not active", lambda a, n: {"image_ref": _image(a, status="queued")}, 400, "Ecs.0005", "queued"),
    (
        "root volume too big",
        lambda a, n: {"root_volume": PostPaidServerRootVolume(volumetype="SSD", size=5000)},
        400,
        "Ecs.0005",
        "root_volume.size",
    ),
    (
        "unknown volume type",
        lambda a, n: {"root_volume": PostPaidServerRootVolume(volumetype="FLOPPY")},
        400,
        "Ecs.0005",
        "volumetype",
    ),
    ("user_data not base64", lambda a, n: {"user_data": "not base64!"}, 400, "Ecs.0005", "base64"),
    (
        "user_data over 32 KiB",
        lambda a, n: {"user_data": base64.b64encode(b"x" * (32 * 1024 + 1)).decode()},
        400,
        "Ecs.0005",
        "32768",
    ),
    (
        "user_data not text",
        lambda a, n: {"user_data": base64.b64encode(b"\xff\xfe\x00").decode()},
        400,
        "Ecs.0005",
        "UTF-8",
    ),
    ("weak adminPass", lambda a, n: {"admin_pass": "password"}, 400, "Ecs.0005", "adminPass"),
    (
        "data volumes",
        lambda a, n: {"data_volumes": [PostPaidServerDataVolume(volumetype="SSD", size=10)]},
        400,
        "Ecs.0005",
        "not supported yet",
    ),
    (
        "public ip without an external network",
        lambda a, n: {
            "publicip": PostPaidServerPublicip(
                eip=PostPaidServerEip(
                    iptype="5_bgp", bandwidth=PostPaidServerEipBandwidth(sharetype="PER", size=5)
                )
            )
        },
        400,
        "VPC.1305",
        "LABCLOUD_EXTERNAL_CIDR",
    ),
    ("unknown availability zone", lambda a, n: {"availability_zone": "mars-1a"}, 400, "Ecs.0005", "mars-1a"),
    (
        "duplicate tag keys",
        lambda a, n: {
            "server_tags": [PostPaidServerTag(key="k", value="1"), PostPaidServerTag(key="k", value="2")]
        },
        400,
        "Ecs.0005",
        "twice",
    ),
    ("no nics", lambda a, n: {"nics": []}, 400, "Ecs.0005", "nics"),
    ("missing imageRef", lambda a, n: {"image_ref": None}, 400, "Ecs.0005", "imageRef"),
    ("missing root_volume", lambda a, n: {"root_volume": None}, 400, "Ecs.0005", "root_volume"),
    ("count as a string", lambda a, n: {"count": "2"}, 400, "Ecs.0005", "count"),
]


@pytest.mark.parametrize(
    ("overrides", "status", "code", "text"), [c[1:] for c in SDK_CASES], ids=[c[0] for c in SDK_CASES]
)
def test_bad_create_is_refused_and_creates_nothing(api, net, overrides, status, code, text) -> None:  # type: ignore[no-untyped-def]
    body = server(net, **overrides(api, net))
    before, groups = counts(api), _groups(api)
    err = expect_error(lambda: create(api.ecs(), body), status, code)
    assert text in err.error_msg
    # The same request as a dry run is refused the same way.
    expect_error(lambda: create(api.ecs(), body, dry_run=True), status, code)
    assert counts(api) == before and _groups(api) == groups


def test_subnet_of_another_vpc(api, net) -> None:  # type: ignore[no-untyped-def]
    other_vpc = create_vpc(api.vpc(), name="other", cidr="10.30.0.0/16")
    other_subnet = create_subnet(api.vpc(), other_vpc.id, cidr="10.30.1.0/24", gateway_ip="10.30.1.1")
    before = counts(api)
    body = server(net, nics=[PostPaidServerNic(subnet_id=other_subnet.id)])
    err = expect_error(lambda: create(api.ecs(), body), 400, "Ecs.0005")
    assert "is not in VPC" in err.error_msg
    assert counts(api) == before


def test_another_projects_network_is_404(api, net) -> None:  # type: ignore[no-untyped-def]
    other = api.new_project("other")
    before = counts(api)
    theirs = server(net)  # the admin project's VPC and subnet, used by another tenant
    expect_error(lambda: create(other.ecs(), theirs), 404, "VPC.0003")
    assert counts(api) == before


def test_fixed_ip_already_taken(api, net) -> None:  # type: ignore[no-untyped-def]
    with session_scope(api.ctx.engine) as session:
        subnet = session.get(Subnet, net.subnet_id)
        assert subnet is not None
        ipam.allocate_port(
            session,
            project_id=api.project_id,
            subnet=subnet,
            ip_address="10.20.1.50",
            security_group_ids=[],
            server_id=None,
        )
    before, groups = counts(api), _groups(api)
    err = expect_error(lambda: create(api.ecs(), server(net, nics=_nic(net, "10.20.1.50"))), 400, "Ecs.0005")
    assert "already in use" in err.error_msg
    # The default security group made inside the refused transaction was rolled back with it.
    assert counts(api) == before and _groups(api) == groups


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"server": {', "JSON"),
        (b"[]", "dictionary"),
        (b'{"server": "web"}', "server"),
        (b'{"server": {"name": 7}}', "name"),
        (b"", "required"),
    ],
    ids=["truncated", "array", "server not an object", "name not a string", "empty"],
)
def test_malformed_bodies_are_400(api, body: bytes, text: str) -> None:  # type: ignore[no-untyped-def]
    before = counts(api)
    response = raw_request(api, "POST", f"/v1/{api.project_id}/cloudservers", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "Ecs.0005" and text.lower() in error["message"].lower()
    assert counts(api) == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"os-start": {"servers": []}},
        {"os-start": {"servers": [{"id": "a"}]}, "os-stop": {"servers": [{"id": "a"}]}},
        {"reboot": {"servers": [{"id": "a"}], "type": "GENTLE"}},
        {"os-stop": {"servers": "a"}},
    ],
    ids=["no action", "no servers", "two actions", "bad reboot type", "servers not a list"],
)
def test_malformed_actions_are_400(api, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    before = counts(api)
    response = raw_request(
        api, "POST", f"/v1/{api.project_id}/cloudservers/action", json.dumps(body).encode()
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "Ecs.0005"
    assert counts(api) == before


def test_malformed_delete_is_400(api) -> None:  # type: ignore[no-untyped-def]
    response = raw_request(api, "POST", f"/v1/{api.project_id}/cloudservers/delete", b'{"servers": []}')
    assert response.status_code == 400 and response.json()["error"]["code"] == "Ecs.0005"

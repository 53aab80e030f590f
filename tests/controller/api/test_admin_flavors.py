"""Admin flavors (`/v1/admin/flavors`, labcloud's operator API, signed like every call) and `labcloud flavor
create|delete`, against a real controller; the official ECS SDK sees the result in its flavor list, creates and
resizes servers with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ListFlavorsRequest, ListResizeFlavorsRequest
from sqlmodel import Session, func, select

from agent.storage.disks import GIB, image_info
from agent.storage.layout import instance_paths
from controller.cli.client import ApiCallError, ApiClient, Credentials
from controller.cli.main import main
from controller.models.flavor import Flavor
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job
from tests.controller.api.test_server_changes import resize


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def client_of(clients: Any) -> ApiClient:
    return ApiClient(Credentials(clients.endpoint, clients.ak, clients.sk, clients.project_id))


def refused(call: Any, status: int, code: str) -> str:
    with pytest.raises(ApiCallError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value.message


def flavor_rows(api: Any) -> list[tuple[str, str, int, int, int]]:
    with Session(api.ctx.engine) as session:
        rows = session.exec(select(Flavor).order_by(Flavor.id)).all()
        return [(f.id, f.name, f.vcpus, f.ram_mib, f.disk_gib) for f in rows]


def test_create_use_and_delete_a_flavor(api: Any, agent_host: Any) -> None:
    ecs = api.ecs()
    with client_of(api) as admin:
        made = admin.post(
            "/v1/admin/flavors", {"flavor": {"name": "c2.big.4", "vcpus": 2, "ram": 512, "disk": 4}}
        )
    assert made["flavor"]["id"] == "c2.big.4"
    listed = {f.id: f for f in ecs.list_flavors(ListFlavorsRequest()).flavors}
    assert (listed["c2.big.4"].vcpus, listed["c2.big.4"].ram, listed["c2.big.4"].disk) == ("2", 512, "4")

    # A server of the default flavor resized to it gets its larger root disk.
    (sid,), job = create_and_wait(ecs, server(make_net(api)))
    assert job.status == "SUCCESS", job
    offered = ecs.list_resize_flavors(ListResizeFlavorsRequest(instance_uuid=sid)).flavors
    assert "c2.big.4" in [f.id for f in offered]
    job = wait_job(ecs, resize(ecs, sid, "c2.big.4").job_id)
    assert job.status == "SUCCESS", job.fail_reason
    root = instance_paths(agent_host.settings.state_dir, sid).root_disk
    assert image_info(root).virtual_size == 4 * GIB

    before = flavor_rows(api)
    with client_of(api) as admin:
        message = refused(lambda: admin.delete("/v1/admin/flavors/c2.big.4"), 409, "Ecs.0104")
    assert sid in message
    assert flavor_rows(api) == before

    # Back to the small flavor (the disk stays 4 GiB), then the flavor can go.
    with client_of(api) as admin:
        admin.post(
            "/v1/admin/flavors", {"flavor": {"name": "spare", "id": "t0.spare.1", "vcpus": 1, "ram": 128}}
        )
    job = wait_job(ecs, resize(ecs, sid, "t0.spare.1").job_id)
    assert job.status == "SUCCESS", job.fail_reason
    with client_of(api) as admin:
        assert admin.delete("/v1/admin/flavors/c2.big.4") is None
    assert "c2.big.4" not in [f.id for f in ecs.list_flavors(ListFlavorsRequest()).flavors]
    assert ("t0.spare.1", "spare", 1, 128, 0) in flavor_rows(api)


def test_bad_flavor_requests_change_nothing(api: Any) -> None:
    before = flavor_rows(api)
    tenant = api.new_project("not-admin")
    body = {"flavor": {"name": "x1", "vcpus": 1, "ram": 256}}
    with client_of(tenant) as user:
        assert "admin" in refused(lambda: user.post("/v1/admin/flavors", body), 403, "Ecs.0003")
        refused(lambda: user.delete("/v1/admin/flavors/s6.nano.1"), 403, "Ecs.0003")
    with client_of(api) as admin:
        assert "s6.nano.1" in refused(
            lambda: admin.post(
                "/v1/admin/flavors", {"flavor": {"name": "s6.nano.1", "vcpus": 1, "ram": 128}}
            ),
            409,
            "Ecs.0104",
        )
        bad = {"name": "bad name", "vcpus": 0, "ram": 64, "disk": -1}
        message = refused(lambda: admin.post("/v1/admin/flavors", {"flavor": bad}), 400, "Ecs.0005")
        assert all(word in message for word in ("name", "vcpus", "ram", "disk"))
        refused(
            lambda: admin.post("/v1/admin/flavors", {"flavor": {"name": "x", "vcpus": "2", "ram": 128}}),
            400,
            "Ecs.0005",
        )
        refused(
            lambda: admin.post("/v1/admin/flavors", {"flavor": {"name": "x", "ram": 128}}), 400, "Ecs.0005"
        )
        refused(lambda: admin.delete("/v1/admin/flavors/no-such"), 404, "Ecs.0038")
    assert flavor_rows(api) == before


def test_flavor_create_and_delete_cli(api: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("LABCLOUD_HOME", str(api.ctx.settings.home))

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    assert cli("flavor", "create", "m1.disk", "--vcpus", "2", "--ram", "1024", "--disk", "10") == (
        0,
        "m1.disk\n",
        "",
    )
    code, out, _ = cli("flavor", "list")
    assert code == 0 and ["m1.disk", "m1.disk", "2", "1024", "10"] in [
        line.split() for line in out.splitlines()
    ]
    code, out, err = cli("flavor", "create", "other", "--vcpus", "1", "--ram", "128", "--id", "m1.disk")
    assert code == 1 and out == "" and "Ecs.0104" in err
    assert cli("flavor", "delete", "m1.disk") == (0, "flavor m1.disk deleted\n", "")
    code, _, err = cli("flavor", "delete", "m1.disk")
    assert code == 1 and "Ecs.0038" in err
    with Session(api.ctx.engine) as session:
        assert session.exec(select(func.count()).where(Flavor.id == "m1.disk")).one() == 0

"""EVS volumes and ECS attach/detach through the official SDKs: a real controller and a real agent on libvirt's
test driver (which cannot hot-plug, so servers are stopped first and volumes go into the domain's config).

Checked independently of the API where it matters: the agent's state directory and the domain XML.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import (
    AttachServerVolumeOption,
    AttachServerVolumeRequest,
    AttachServerVolumeRequestBody,
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    DeleteServersRequest,
    DeleteServersRequestBody,
    DetachServerVolumeRequest,
    ListServerVolumeAttachmentsRequest,
    ServerId,
    ShowServerRequest,
)
from huaweicloudsdkevs.v2 import (
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    DeleteVolumeRequest,
    EvsClient,
    ListVolumesRequest,
    OsExtend,
    ResizeVolumeRequest,
    ResizeVolumeRequestBody,
    ShowJobRequest,
    ShowVolumeRequest,
    UpdateVolumeOption,
    UpdateVolumeRequest,
    UpdateVolumeRequestBody,
)
from sqlmodel import Session, func, select

from agent.storage.disks import GIB, image_info
from agent.storage.layout import instance_paths
from agent.virt.domain_xml import find_disk_device
from controller.models.job import Job
from controller.models.volume import Volume
from controller.services.volume_state import STATUSES, TRANSITIONS, refusal
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job

JOB_TIMEOUT_S = 180.0


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def evs_client(clients: Any) -> Any:
    return (
        EvsClient.new_builder()
        .with_http_config(HttpConfig.get_default_config())
        .with_credentials(BasicCredentials(clients.ak, clients.sk, clients.project_id))
        .with_endpoints([clients.endpoint])
        .build()
    )


def wait_evs_job(evs: Any, job_id: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = evs.show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.05)


def create_volume(evs: Any, name: str = "data", size: int = 1, **extra: Any) -> Any:
    option = CreateVolumeOption(availability_zone="lab-1a", size=size, volume_type="SSD", name=name, **extra)
    return evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))


def show_volume(evs: Any, volume_id: str) -> Any:
    return evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume


def attach(ecs: Any, server_id: str, volume_id: str, device: str | None = None) -> Any:
    option = AttachServerVolumeOption(volume_id=volume_id, device=device)
    body = AttachServerVolumeRequestBody(volume_attachment=option)
    return ecs.attach_server_volume(AttachServerVolumeRequest(server_id=server_id, body=body))


def detach(ecs: Any, server_id: str, volume_id: str) -> Any:
    return ecs.detach_server_volume(DetachServerVolumeRequest(server_id=server_id, volume_id=volume_id))


def volume_rows(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(Volume)).one())


def stopped_server(api: Any, net: Any = None) -> str:
    ecs = api.ecs()
    (server_id,), job = create_and_wait(ecs, server(net or make_net(api)))
    assert job.status == "SUCCESS", job
    body = BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=[ServerId(id=server_id)]))
    assert (
        wait_job(ecs, ecs.batch_stop_servers(BatchStopServersRequest(body=body)).job_id).status == "SUCCESS"
    )
    return server_id


@pytest.mark.parametrize("action", sorted(TRANSITIONS))
@pytest.mark.parametrize("status", sorted(set(STATUSES) - {"deleted"}))
def test_every_status_and_action_is_either_allowed_or_explained(status: str, action: str) -> None:
    t = TRANSITIONS[action]
    reason = refusal(status, action)
    assert (reason is None) == (status in t.allowed_from)
    if reason is not None:
        assert status in reason


def test_the_usual_transitions() -> None:
    """EVS's lifecycle: what each action starts from, passes through and ends in."""
    table = {
        a: (sorted(t.allowed_from), t.during, t.on_success, t.on_failure) for a, t in TRANSITIONS.items()
    }
    assert table["create"] == ([], "creating", "available", "error")
    assert table["attach"] == (["available"], "attaching", "in-use", "available")
    assert table["detach"] == (["in-use"], "detaching", "available", "in-use")
    assert table["delete"] == (["available", "error", "error_rollbacking"], "deleting", "deleted", "error")
    assert table["extend"] == (["available", "in-use"], "extending", None, None)  # back where it began
    # In-use and busy volumes are never deleted; an error volume can only be deleted.
    assert all(refusal(s, "delete") for s in ("in-use", "attaching", "detaching", "extending", "creating"))
    assert [a for a in TRANSITIONS if refusal("error", a) is None] == ["delete"]


def test_create_show_list_update_delete(api: Any) -> None:
    evs = evs_client(api)
    created = create_volume(evs, name="data", metadata={"team": "a"})
    assert len(created.volume_ids) == 1
    job = wait_evs_job(evs, created.job_id)
    assert job.status == "SUCCESS" and job.entities.volume_id == created.volume_ids[0]
    assert (job.entities.size, job.entities.volume_type) == (1, "SSD")
    volume = show_volume(evs, created.volume_ids[0])
    assert (volume.status, volume.size, volume.volume_type, volume.name) == ("available", 1, "SSD", "data")
    assert (volume.bootable, volume.shareable, volume.multiattach, volume.attachments) == (
        "false",
        "false",
        False,
        [],
    )
    assert volume.metadata == {"team": "a"} and volume.availability_zone == "lab-1a"

    wait_evs_job(evs, create_volume(evs, name="other", count=2).job_id)
    listed = evs.list_volumes(ListVolumesRequest())
    assert listed.count == 3 and {v.name for v in listed.volumes} == {"data", "other-0001", "other-0002"}
    assert [v.id for v in evs.list_volumes(ListVolumesRequest(name="data")).volumes] == [volume.id]
    assert evs.list_volumes(ListVolumesRequest(status="in-use")).count == 0
    page = evs.list_volumes(ListVolumesRequest(limit=2, offset=2))
    assert page.count == 3 and len(page.volumes) == 1
    pages = [evs.list_volumes(ListVolumesRequest(limit=1, offset=i)).volumes for i in range(3)]
    assert [p[0].id for p in pages] == [v.id for v in listed.volumes]  # newest first, each once
    assert evs.list_volumes(ListVolumesRequest(availability_zone="lab-1a")).count == 3
    assert evs.list_volumes(ListVolumesRequest(availability_zone="lab-1b")).count == 0
    assert evs.list_volumes(ListVolumesRequest(server_id="no-such-server")).count == 0
    assert evs.list_volumes(ListVolumesRequest(status="available", name="data")).count == 1
    for bad in (
        ListVolumesRequest(limit=0),
        ListVolumesRequest(offset=-1),
        ListVolumesRequest(status="bogus"),
    ):
        expect_error(lambda bad=bad: evs.list_volumes(bad), 400, "EVS.2024")

    body = UpdateVolumeRequestBody(volume=UpdateVolumeOption(name="renamed", description="scratch"))
    updated = evs.update_volume(UpdateVolumeRequest(volume_id=volume.id, body=body))
    assert (updated.name, updated.description, updated.size) == ("renamed", "scratch", 1)
    assert show_volume(evs, volume.id).name == "renamed"
    nothing = UpdateVolumeRequestBody(volume=UpdateVolumeOption())
    expect_error(
        lambda: evs.update_volume(UpdateVolumeRequest(volume_id=volume.id, body=nothing)), 400, "EVS.2024"
    )
    too_long = UpdateVolumeRequestBody(volume=UpdateVolumeOption(name="x" * 65))
    expect_error(
        lambda: evs.update_volume(UpdateVolumeRequest(volume_id=volume.id, body=too_long)), 400, "EVS.2024"
    )
    expect_error(lambda: evs.update_volume(UpdateVolumeRequest(volume_id="nope", body=body)), 404, "EVS.2025")
    assert (show_volume(evs, volume.id).name, show_volume(evs, volume.id).description) == (
        "renamed",
        "scratch",
    )

    deleted = evs.delete_volume(DeleteVolumeRequest(volume_id=volume.id))
    assert wait_evs_job(evs, deleted.job_id).status == "SUCCESS"
    expect_error(lambda: show_volume(evs, volume.id), 404, "EVS.2025")
    assert evs.list_volumes(ListVolumesRequest()).count == 2


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"size": 0}, "size"),
        ({"size": 40000}, "size"),
        ({"volume_type": "NVME"}, "volume_type"),
        ({"availability_zone": "mars-1"}, "availability_zone"),
        ({"count": 0}, "count"),
        ({"multiattach": True}, "multiattach"),
        ({"snapshot_id": "snap-1", "image_ref": "img-1"}, "snapshot_id"),
    ],
)
def test_bad_create_is_400_and_creates_nothing(api: Any, fields: dict[str, Any], fragment: str) -> None:
    evs = evs_client(api)
    option: dict[str, Any] = {"availability_zone": "lab-1a", "size": 1, "volume_type": "SSD", **fields}
    body = CreateVolumeRequestBody(volume=CreateVolumeOption(**option))
    exc = expect_error(lambda: evs.create_volume(CreateVolumeRequest(body=body)), 400, "EVS.2024")
    assert fragment in exc.error_msg
    assert volume_rows(api) == 0


def test_attach_detach_through_ecs(api: Any, agent_host: Any) -> None:
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    vol_a, vol_b = (create_volume(evs, name=n).volume_ids[0] for n in ("a", "b"))
    wait_volume(evs, vol_a, "available")
    wait_volume(evs, vol_b, "available")
    state = agent_host.settings.state_dir
    assert not (state / "volumes" / f"{vol_a}.qcow2").exists()  # a never-attached volume lives only in the DB

    job = wait_job(ecs, attach(ecs, server_id, vol_a).job_id)
    assert job.status == "SUCCESS", job
    assert job.entities.server_id == server_id

    volume = show_volume(evs, vol_a)
    assert volume.status == "in-use"
    assert [(a.server_id, a.device, a.volume_id) for a in volume.attachments] == [
        (server_id, "/dev/vdb", vol_a)
    ]
    listed = ecs.list_server_volume_attachments(ListServerVolumeAttachmentsRequest(server_id=server_id))
    assert [(a.id, a.volume_id, a.server_id, a.device) for a in listed.volume_attachments] == [
        (vol_a, vol_a, server_id, "/dev/vdb")
    ]
    detail = ecs.show_server(ShowServerRequest(server_id=server_id)).server
    assert [(v.id, v.device) for v in detail.os_extended_volumesvolumes_attached] == [(vol_a, "/dev/vdb")]
    assert [v.id for v in evs.list_volumes(ListVolumesRequest(server_id=server_id)).volumes] == [vol_a]
    assert [v.id for v in evs.list_volumes(ListVolumesRequest(status="in-use")).volumes] == [vol_a]
    # Independent oracles: the file on the host and the domain's persistent config.
    assert (state / "volumes" / f"{vol_a}.qcow2").exists()
    disk = find_disk_device(agent_host.service._host.domain_xml(server_id, inactive=True), "vdb")
    assert disk is not None and f"<serial>{vol_a[:20]}</serial>" in disk

    job = wait_job(ecs, attach(ecs, server_id, vol_b, "/dev/vdd").job_id)
    assert job.status == "SUCCESS", job
    assert show_volume(evs, vol_b).attachments[0].device == "/dev/vdd"

    job = wait_job(ecs, detach(ecs, server_id, vol_a).job_id)
    assert job.status == "SUCCESS", job
    volume = show_volume(evs, vol_a)
    assert (volume.status, volume.attachments) == ("available", [])
    assert find_disk_device(agent_host.service._host.domain_xml(server_id, inactive=True), "vdb") is None
    listed = ecs.list_server_volume_attachments(ListServerVolumeAttachmentsRequest(server_id=server_id))
    assert [a.volume_id for a in listed.volume_attachments] == [vol_b]

    assert (
        wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=vol_a)).job_id).status == "SUCCESS"
    )
    assert not (state / "volumes" / f"{vol_a}.qcow2").exists()


def wait_volume(evs: Any, volume_id: str, status: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while show_volume(evs, volume_id).status != status:
        assert time.monotonic() < deadline, f"volume {volume_id} never became {status}"
        time.sleep(0.05)


def test_bad_attach_and_detach_change_nothing(api: Any, agent_host: Any) -> None:
    ecs, evs = api.ecs(), evs_client(api)
    net = make_net(api)
    server_id, elsewhere = stopped_server(api, net), stopped_server(api, net)
    attached, spare = (create_volume(evs, name=n).volume_ids[0] for n in ("attached", "spare"))
    wait_volume(evs, attached, "available")
    wait_volume(evs, spare, "available")
    assert wait_job(ecs, attach(ecs, server_id, attached).job_id).status == "SUCCESS"

    def snapshot() -> list[tuple[str, str, str | None, str | None]]:
        with Session(api.ctx.engine) as session:
            rows = session.exec(select(Volume).order_by(Volume.id)).all()
            return [(v.id, v.status, v.server_id, v.device) for v in rows]

    before = snapshot()
    expect_error(lambda: attach(ecs, server_id, attached), 409, "EVS.2026")  # already in use
    exc = expect_error(lambda: attach(ecs, elsewhere, attached), 409, "EVS.2026")  # in use elsewhere
    assert "in-use" in exc.error_msg
    expect_error(lambda: attach(ecs, elsewhere, spare, "/dev/vda"), 400, "Ecs.0005")  # the root disk's device
    # The root disk is no EVS volume: whatever a caller names it by, a detach is a clear 400.
    for root in (server_id, "vda"):
        exc = expect_error(lambda root=root: detach(ecs, server_id, root), 400, "EVS.2024")
        assert "root disk" in exc.error_msg
    expect_error(lambda: detach(ecs, elsewhere, attached), 400, "EVS.2024")  # attached to another server
    expect_error(lambda: attach(ecs, server_id, spare, "/dev/vdb"), 400, "Ecs.0005")  # device taken
    expect_error(lambda: attach(ecs, server_id, spare, "/dev/hda"), 400, "Ecs.0005")
    expect_error(lambda: attach(ecs, server_id, "no-such-volume"), 404, "EVS.2025")
    expect_error(lambda: attach(ecs, "no-such-server", spare), 404, "Ecs.0114")
    expect_error(lambda: detach(ecs, server_id, spare), 400, "EVS.2024")  # not attached to it
    expect_error(lambda: detach(ecs, server_id, "no-such-volume"), 404, "EVS.2025")
    expect_error(lambda: evs.delete_volume(DeleteVolumeRequest(volume_id=attached)), 409, "EVS.2026")

    other = api.new_project("other")
    other_ecs, other_evs = other.ecs(), evs_client(other)
    expect_error(lambda: show_volume(other_evs, attached), 404, "EVS.2025")
    expect_error(lambda: other_evs.delete_volume(DeleteVolumeRequest(volume_id=spare)), 404, "EVS.2025")
    expect_error(lambda: attach(other_ecs, server_id, spare), 404, "Ecs.0114")
    expect_error(lambda: detach(other_ecs, server_id, attached), 404, "Ecs.0114")
    assert other_evs.list_volumes(ListVolumesRequest()).count == 0

    assert snapshot() == before


def test_attach_to_a_server_in_another_zone_is_refused(api: Any, agents: Any) -> None:
    agents.start("a")
    agents.start("b", availability_zone="lab-1b")
    ecs, evs = api.ecs(), evs_client(api)
    (server_id,), job = create_and_wait(ecs, server(make_net(api), availability_zone="lab-1a"))
    assert job.status == "SUCCESS", job
    body = CreateVolumeRequestBody(
        volume=CreateVolumeOption(availability_zone="lab-1b", size=1, volume_type="SSD", name="far")
    )
    created = evs.create_volume(CreateVolumeRequest(body=body))
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    (volume_id,) = created.volume_ids

    def jobs() -> int:
        with Session(api.ctx.engine) as session:
            return int(session.exec(select(func.count()).select_from(Job)).one())

    before = jobs()
    exc = expect_error(lambda: attach(ecs, server_id, volume_id), 400, "Ecs.0005")
    assert "lab-1b" in exc.error_msg and "same availability zone" in exc.error_msg
    volume = show_volume(evs, volume_id)
    assert (volume.status, volume.attachments, jobs()) == ("available", [], before)


def test_a_deleted_servers_volume_is_not_stuck_in_use(api: Any, agent_host: Any) -> None:
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    (volume_id,) = create_volume(evs).volume_ids
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    volume_file = agent_host.settings.state_dir / "volumes" / f"{volume_id}.qcow2"

    root_disk = instance_paths(agent_host.settings.state_dir, server_id).root_disk
    body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_volume=False)
    assert wait_job(ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id).status == "SUCCESS"
    assert volume_file.exists()  # the server's disks went, the volume's data did not
    assert not root_disk.exists()
    released = show_volume(evs, volume_id)
    assert (released.status, released.attachments) == ("available", [])

    assert (
        wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)).job_id).status
        == "SUCCESS"
    )
    assert not volume_file.exists()


def extend(evs: Any, volume_id: str, new_size: int) -> Any:
    body = ResizeVolumeRequestBody(os_extend=OsExtend(new_size=new_size))
    return evs.resize_volume(ResizeVolumeRequest(volume_id=volume_id, body=body))


def test_extend_a_never_attached_volume_changes_its_row_only(api: Any, agent_host: Any) -> None:
    evs = evs_client(api)
    (volume_id,) = create_volume(evs, size=1).volume_ids
    wait_volume(evs, volume_id, "available")

    job = wait_evs_job(evs, extend(evs, volume_id, 3).job_id)
    assert job.status == "SUCCESS", job
    assert job.entities.volume_id == volume_id
    volume = show_volume(evs, volume_id)
    assert (volume.status, volume.size) == ("available", 3)
    assert not (agent_host.settings.state_dir / "volumes" / f"{volume_id}.qcow2").exists()


def test_extend_grows_the_file_attached_or_detached(api: Any, agent_host: Any) -> None:
    """On a stopped server (the test driver cannot resize live disks) the agent grows the file itself."""
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    (volume_id,) = create_volume(evs, size=1).volume_ids
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    volume_file = agent_host.settings.state_dir / "volumes" / f"{volume_id}.qcow2"

    job = wait_evs_job(evs, extend(evs, volume_id, 2).job_id)
    assert job.status == "SUCCESS", job
    volume = show_volume(evs, volume_id)
    assert (volume.status, volume.size) == ("in-use", 2)
    assert volume.attachments[0].server_id == server_id
    assert image_info(volume_file, fmt="qcow2").virtual_size == 2 * GIB  # the file, not the API, says so

    assert wait_job(ecs, detach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    job = wait_evs_job(evs, extend(evs, volume_id, 4).job_id)
    assert job.status == "SUCCESS", job
    assert (show_volume(evs, volume_id).status, show_volume(evs, volume_id).size) == ("available", 4)
    assert image_info(volume_file, fmt="qcow2").virtual_size == 4 * GIB


def test_bad_extend_is_refused_and_changes_nothing(api: Any, agent_host: Any) -> None:
    evs = evs_client(api)
    (volume_id,) = create_volume(evs, size=2).volume_ids
    wait_volume(evs, volume_id, "available")

    def snapshot() -> list[tuple[str, str, int]]:
        with Session(api.ctx.engine) as session:
            return [(v.id, v.status, v.size) for v in session.exec(select(Volume).order_by(Volume.id)).all()]

    def jobs() -> int:
        with Session(api.ctx.engine) as session:
            return int(session.exec(select(func.count()).select_from(Job)).one())

    before, jobs_before = snapshot(), jobs()
    expect_error(lambda: extend(evs, volume_id, 1), 400, "EVS.2024")  # smaller
    expect_error(lambda: extend(evs, volume_id, 2), 400, "EVS.2024")  # the same size
    expect_error(lambda: extend(evs, volume_id, 40000), 400, "EVS.2024")  # past the limit
    expect_error(lambda: extend(evs, "no-such-volume", 3), 404, "EVS.2025")
    other = evs_client(api.new_project("other"))
    expect_error(lambda: extend(other, volume_id, 3), 404, "EVS.2025")
    assert (snapshot(), jobs()) == (before, jobs_before)


def test_deleting_a_server_with_delete_volume_deletes_its_data_volumes(api: Any, agent_host: Any) -> None:
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    attached, spare = (create_volume(evs, name=n).volume_ids[0] for n in ("attached", "spare"))
    wait_volume(evs, attached, "available")
    wait_volume(evs, spare, "available")
    assert wait_job(ecs, attach(ecs, server_id, attached).job_id).status == "SUCCESS"
    # `spare` was attached once and detached: its file is on the host but it is not the server's any more.
    assert wait_job(ecs, attach(ecs, server_id, spare).job_id).status == "SUCCESS"
    assert wait_job(ecs, detach(ecs, server_id, spare).job_id).status == "SUCCESS"
    volumes_dir = agent_host.settings.state_dir / "volumes"
    root_disk = instance_paths(agent_host.settings.state_dir, server_id).root_disk
    assert root_disk.exists()
    assert (volumes_dir / f"{attached}.qcow2").exists() and (volumes_dir / f"{spare}.qcow2").exists()

    body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_volume=True)
    assert wait_job(ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id).status == "SUCCESS"

    assert not (volumes_dir / f"{attached}.qcow2").exists()
    assert not root_disk.exists()  # the root disk always goes
    expect_error(lambda: show_volume(evs, attached), 404, "EVS.2025")
    with Session(api.ctx.engine) as session:
        row = session.get(Volume, attached)
        assert row is not None and (row.status, row.server_id, row.deleted_at is not None) == (
            "deleted",
            None,
            True,
        )
    assert show_volume(evs, spare).status == "available"  # only the server's own volumes go
    assert (volumes_dir / f"{spare}.qcow2").exists()

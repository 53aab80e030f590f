"""EVS snapshots, volumes from a snapshot or an image, and ECS `block_device`, through the official SDKs against a
real controller and real agents on libvirt's test driver (servers are stopped, since the driver cannot hot-plug).

The data is checked on the hosts, independently of the API: the snapshot and volume files, with qemu-io.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import ListServerBlockDevicesRequest, ShowServerBlockDeviceRequest
from huaweicloudsdkevs.v2 import (
    CreateSnapshotOption,
    CreateSnapshotRequest,
    CreateSnapshotRequestBody,
    DeleteSnapshotRequest,
    DeleteVolumeRequest,
    ListSnapshotsRequest,
    RollbackSnapshotOption,
    RollbackSnapshotRequest,
    RollbackSnapshotRequestBody,
    ShowSnapshotRequest,
    UpdateSnapshotOption,
    UpdateSnapshotRequest,
    UpdateSnapshotRequestBody,
)
from sqlmodel import Session, select

from agent.storage.disks import GIB, image_info
from controller.cli.client import ApiClient, Credentials
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume
from controller.services.snapshot_state import TRANSITIONS, refusal
from tests.agent.storage.test_snapshots import holds_pattern, same_data, write_pattern
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job
from tests.controller.api.test_volumes import (
    JOB_TIMEOUT_S,
    attach,
    create_volume,
    detach,
    evs_client,
    extend,
    show_volume,
    stopped_server,
    wait_evs_job,
    wait_volume,
)


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def create_snapshot(evs: Any, volume_id: str, **extra: Any) -> Any:
    option = CreateSnapshotOption(volume_id=volume_id, **extra)
    return evs.create_snapshot(
        CreateSnapshotRequest(body=CreateSnapshotRequestBody(snapshot=option))
    ).snapshot


def show_snapshot(evs: Any, snapshot_id: str) -> Any:
    return evs.show_snapshot(ShowSnapshotRequest(snapshot_id=snapshot_id)).snapshot


def wait_snapshot(evs: Any, snapshot_id: str, status: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (snapshot := show_snapshot(evs, snapshot_id)).status != status:
        assert snapshot.status != "error", snapshot
        assert time.monotonic() < deadline, f"snapshot {snapshot_id} never became {status}"
        time.sleep(0.05)
    return snapshot


def wait_snapshot_gone(evs: Any, snapshot_id: str) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        try:
            show_snapshot(evs, snapshot_id)
        except ClientRequestException as exc:
            assert exc.status_code == 404, exc
            return
        assert time.monotonic() < deadline, f"snapshot {snapshot_id} was never deleted"
        time.sleep(0.05)


def rollback(evs: Any, snapshot_id: str, volume_id: str, name: str | None = None) -> Any:
    body = RollbackSnapshotRequestBody(rollback=RollbackSnapshotOption(volume_id=volume_id, name=name))
    return evs.rollback_snapshot(RollbackSnapshotRequest(snapshot_id=snapshot_id, body=body)).rollback


def new_volume(evs: Any, name: str, size: int = 1, **source: Any) -> str:
    created = create_volume(evs, name=name, size=size, **source)
    job = wait_evs_job(evs, created.job_id)
    assert job.status == "SUCCESS", job
    return str(created.volume_ids[0])


def rows(api: Any) -> list[tuple[str, str, str]]:
    """Every snapshot and volume row with its status: what a refused request must leave as it was."""
    with Session(api.ctx.engine) as session:
        snaps = [("snapshot", s.id, s.status) for s in session.exec(select(Snapshot).order_by(Snapshot.id))]
        vols = [("volume", v.id, v.status) for v in session.exec(select(Volume).order_by(Volume.id))]
    return snaps + vols


@pytest.mark.parametrize("action", sorted(TRANSITIONS))
@pytest.mark.parametrize("status", ["creating", "available", "error", "deleting", "rollbacking"])
def test_every_snapshot_status_and_action_is_either_allowed_or_explained(status: str, action: str) -> None:
    reason = refusal(status, action)
    assert (reason is None) == (status in TRANSITIONS[action].allowed_from)
    if reason is not None:
        assert status in reason


def test_snapshot_of_a_never_attached_volume_is_a_row_only(api: Any, agent_host: Any) -> None:
    evs = evs_client(api)
    volume_id = new_volume(evs, "data")

    created = create_snapshot(evs, volume_id, name="s1", description="first", metadata={"k": "v"})
    assert (created.status, created.volume_id, created.size, created.name) == ("creating", volume_id, 1, "s1")
    snapshot = wait_snapshot(evs, created.id, "available")
    assert (snapshot.metadata, snapshot.description) == ({"k": "v"}, "first")
    assert snapshot.os_extended_snapshot_attributesprogress == "100%"
    assert snapshot.os_extended_snapshot_attributesproject_id == api.project_id
    assert not (agent_host.settings.state_dir / "snapshots").exists()  # nothing on any host

    other = wait_snapshot(evs, create_snapshot(evs, volume_id, name="s2").id, "available")
    listed = evs.list_snapshots(ListSnapshotsRequest())
    assert listed.count == 2 and {s.name for s in listed.snapshots} == {"s1", "s2"}
    assert listed.snapshots[0].service_type == "EVS"
    assert [s.id for s in evs.list_snapshots(ListSnapshotsRequest(name="s2")).snapshots] == [other.id]
    assert evs.list_snapshots(ListSnapshotsRequest(volume_id=volume_id, status="available")).count == 2
    assert evs.list_snapshots(ListSnapshotsRequest(volume_id="no-such-volume")).count == 0
    page = evs.list_snapshots(ListSnapshotsRequest(limit=1, offset=1))
    assert page.count == 2 and len(page.snapshots) == 1

    body = UpdateSnapshotRequestBody(snapshot=UpdateSnapshotOption(name="renamed", description="d"))
    updated = evs.update_snapshot(UpdateSnapshotRequest(snapshot_id=snapshot.id, body=body)).snapshot
    assert (updated.name, updated.description) == ("renamed", "d")

    # A volume with snapshots cannot go; a volume from a host-less snapshot is again host-less and empty.
    expect_error(lambda: evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)), 409, "EVS.2026")
    copy_id = new_volume(evs, "copy", size=2, snapshot_id=snapshot.id)
    copy = show_volume(evs, copy_id)
    assert (copy.status, copy.size) == ("available", 2)
    assert rollback(evs, snapshot.id, volume_id, name="back").volume_id == volume_id
    wait_volume(evs, volume_id, "available")
    assert show_volume(evs, volume_id).name == "back"
    assert wait_snapshot(evs, snapshot.id, "available").status == "available"

    for snap_id in (snapshot.id, other.id):
        evs.delete_snapshot(DeleteSnapshotRequest(snapshot_id=snap_id))
        wait_snapshot_gone(evs, snap_id)
    assert evs.list_snapshots(ListSnapshotsRequest()).count == 0
    assert wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)).job_id).status == (
        "SUCCESS"
    )


def test_snapshot_rollback_and_new_volume_on_the_host(api: Any, agents: Any) -> None:
    host_a = agents.start("a")
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    volume_id = new_volume(evs, "data")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    state = host_a.settings.state_dir
    volume_file = state / "volumes" / f"{volume_id}.qcow2"
    write_pattern(volume_file, 0xAA)  # the guest's data (the test driver runs no guest)

    before = rows(api)
    exc = expect_error(lambda: create_snapshot(evs, volume_id), 400, "EVS.2024")  # in-use needs force
    assert "force" in exc.error_msg
    assert rows(api) == before

    snapshot = wait_snapshot(evs, create_snapshot(evs, volume_id, force=True).id, "available")
    snapshot_file = state / "snapshots" / f"{snapshot.id}.qcow2"
    assert holds_pattern(snapshot_file, 0xAA) and image_info(snapshot_file, fmt="qcow2").backing_file is None
    write_pattern(volume_file, 0xBB)

    before = rows(api)
    expect_error(lambda: rollback(evs, snapshot.id, volume_id), 409, "EVS.2026")  # attached
    assert rows(api) == before and holds_pattern(volume_file, 0xBB)

    # block_device shows the attached volume.
    listed = ecs.list_server_block_devices(ListServerBlockDevicesRequest(server_id=server_id))
    assert [(d.volume_id, d.device, d.size, d.bus, d.boot_index) for d in listed.volume_attachments] == [
        (volume_id, "/dev/vdb", 1, "virtio", -1)
    ]
    assert listed.attachable_quantity.free_disk == 24
    one = ecs.show_server_block_device(ShowServerBlockDeviceRequest(server_id=server_id, volume_id=volume_id))
    assert (one.volume_attachment.server_id, one.volume_attachment.id) == (server_id, volume_id)
    with ApiClient(Credentials(api.endpoint, api.ak, api.sk, api.project_id)) as client:
        extended = client.get(f"/v1/{api.project_id}/cloudservers/{server_id}/block_device/extendinfo")
    assert [d["volumeId"] for d in extended["volumeAttachments"]] == [volume_id]
    expect_error(
        lambda: ecs.show_server_block_device(
            ShowServerBlockDeviceRequest(server_id=server_id, volume_id="nope")
        ),
        404,
        "EVS.2025",
    )

    assert wait_job(ecs, detach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    rollback(evs, snapshot.id, volume_id)
    wait_volume(evs, volume_id, "available")
    assert holds_pattern(volume_file, 0xAA)  # the snapshot's data is back

    # A volume from the snapshot is made on the snapshot's host at once, larger, with the snapshot's data.
    copy_id = new_volume(evs, "copy", size=2, snapshot_id=snapshot.id)
    copy = show_volume(evs, copy_id)
    assert (copy.status, copy.size, copy.snapshot_id) == ("available", 2, snapshot.id)
    copy_file = state / "volumes" / f"{copy_id}.qcow2"
    assert image_info(copy_file, fmt="qcow2").virtual_size == 2 * GIB and holds_pattern(copy_file, 0xAA)

    # Snapshots stay on their volume's host, so a volume with snapshots does not move to another host.
    host_b = agents.start("b")
    with ApiClient(Credentials(api.endpoint, api.ak, api.sk, api.project_id)) as client:
        client.post(f"/v1/admin/hosts/{host_a.host_id}/disable", {"reason": "fill b"})
    net = make_net(api, cidr="10.30.0.0/16", subnet_cidr="10.30.1.0/24", gateway="10.30.1.1")
    (other_server,), job = create_and_wait(ecs, server(net, name="on-b"))
    assert job.status == "SUCCESS", job
    before = rows(api)
    exc = expect_error(lambda: attach(ecs, other_server, volume_id), 409, "EVS.2026")
    assert "snapshot" in exc.error_msg and host_a.host_id in exc.error_msg
    assert rows(api) == before and not (host_b.settings.state_dir / "volumes" / f"{volume_id}.qcow2").exists()
    # The volume on host a can be attached to the server there.
    assert wait_job(ecs, attach(ecs, server_id, copy_id).job_id).status == "SUCCESS"

    evs.delete_snapshot(DeleteSnapshotRequest(snapshot_id=snapshot.id))
    wait_snapshot_gone(evs, snapshot.id)
    assert not snapshot_file.exists()
    assert holds_pattern(copy_file, 0xAA)  # the copy stands alone


def test_a_volume_from_an_image_is_made_from_it_at_first_attach(api: Any, agent_host: Any) -> None:
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    image_id = make_net(api).image_id
    volume_id = new_volume(evs, "from-image", size=2, image_ref=image_id)
    volume = show_volume(evs, volume_id)
    assert (volume.status, volume.bootable, volume.size) == ("available", "true", 2)
    volume_file = agent_host.settings.state_dir / "volumes" / f"{volume_id}.qcow2"
    assert not volume_file.exists()

    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"

    cached = next((agent_host.settings.state_dir / "images").glob("*.qcow2"))
    assert same_data(cached, volume_file)  # the image's data, in a standalone file of the volume's size
    info = image_info(volume_file, fmt="qcow2")
    assert (info.backing_file, info.virtual_size) == (None, 2 * GIB)

    # A snapshot of it, then a volume from that snapshot, carry the image's data too.
    snapshot = wait_snapshot(evs, create_snapshot(evs, volume_id, force=True).id, "available")
    copy_id = new_volume(evs, "copy", size=2, snapshot_id=snapshot.id)
    assert same_data(cached, agent_host.settings.state_dir / "volumes" / f"{copy_id}.qcow2")


def test_bad_snapshot_requests_change_nothing(api: Any, agent_host: Any) -> None:
    evs = evs_client(api)
    volume_id = new_volume(evs, "data", size=2)
    spare_id = new_volume(evs, "spare")
    snapshot = wait_snapshot(evs, create_snapshot(evs, volume_id).id, "available")
    before = rows(api)

    expect_error(lambda: create_snapshot(evs, "no-such-volume"), 404, "EVS.2025")
    expect_error(lambda: create_snapshot(evs, volume_id, name="x" * 65), 400, "EVS.2024")
    expect_error(lambda: show_snapshot(evs, "no-such-snapshot"), 404, "EVS.2025")
    expect_error(lambda: rollback(evs, snapshot.id, spare_id), 400, "EVS.2024")  # not its volume
    expect_error(lambda: rollback(evs, "no-such-snapshot", volume_id), 404, "EVS.2025")
    expect_error(lambda: evs.list_snapshots(ListSnapshotsRequest(limit=0)), 400, "EVS.2024")
    expect_error(lambda: evs.list_snapshots(ListSnapshotsRequest(status="bogus")), 400, "EVS.2024")
    # Volumes from a snapshot: unknown, too small, another zone, two sources at once.
    expect_error(lambda: create_volume(evs, snapshot_id="no-such-snapshot"), 404, "EVS.2025")
    exc = expect_error(lambda: create_volume(evs, size=1, snapshot_id=snapshot.id), 400, "EVS.2024")
    assert "at least 2 GiB" in exc.error_msg
    exc = expect_error(
        lambda: create_volume(evs, size=2, snapshot_id=snapshot.id, image_ref=make_net(api).image_id),
        400,
        "EVS.2024",
    )
    assert "not both" in exc.error_msg
    expect_error(lambda: create_volume(evs, image_ref="no-such-image"), 404, "IMG.0027")

    other = evs_client(api.new_project("other"))
    expect_error(lambda: show_snapshot(other, snapshot.id), 404, "EVS.2025")
    expect_error(
        lambda: other.delete_snapshot(DeleteSnapshotRequest(snapshot_id=snapshot.id)), 404, "EVS.2025"
    )
    expect_error(lambda: rollback(other, snapshot.id, volume_id), 404, "EVS.2025")
    expect_error(lambda: create_volume(other, size=2, snapshot_id=snapshot.id), 404, "EVS.2025")
    assert other.list_snapshots(ListSnapshotsRequest()).count == 0

    assert rows(api) == before


def test_a_volume_whose_source_is_gone_ends_in_error_and_can_only_be_deleted(
    api: Any, agent_host: Any
) -> None:
    """The `error` status: a volume from a snapshot whose file vanished from its host behind labcloud's back."""
    ecs, evs = api.ecs(), evs_client(api)
    server_id = stopped_server(api)
    volume_id = new_volume(evs, "data")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    snapshot = wait_snapshot(evs, create_snapshot(evs, volume_id, force=True).id, "available")
    state = agent_host.settings.state_dir
    (state / "snapshots" / f"{snapshot.id}.qcow2").unlink()

    created = create_volume(evs, name="orphan", snapshot_id=snapshot.id)
    job = wait_evs_job(evs, created.job_id)
    assert job.status == "FAIL" and snapshot.id in job.fail_reason, job
    (copy_id,) = created.volume_ids
    assert show_volume(evs, copy_id).status == "error"
    assert not (state / "volumes" / f"{copy_id}.qcow2").exists()

    before = rows(api)
    exc = expect_error(lambda: attach(ecs, server_id, copy_id), 409, "EVS.2026")
    assert "error" in exc.error_msg
    expect_error(lambda: extend(evs, copy_id, 2), 409, "EVS.2026")
    expect_error(lambda: create_snapshot(evs, copy_id), 409, "EVS.2026")
    assert rows(api) == before
    assert wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=copy_id)).job_id).status == (
        "SUCCESS"
    )
    expect_error(lambda: show_volume(evs, copy_id), 404, "EVS.2025")

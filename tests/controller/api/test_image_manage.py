"""IMS images after they exist: upload (Glance's record + streamed file), show, update, delete through the
official IMS SDK (and the CLI's signed client for the upload, which the SDK lacks); min_disk/min_ram enforced
when a server is created; an image in use cannot be deleted."""

from __future__ import annotations

import hashlib
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import PostPaidServerRootVolume
from huaweicloudsdkevs.v2 import (
    CreateSnapshotOption,
    CreateSnapshotRequest,
    CreateSnapshotRequestBody,
    DeleteSnapshotRequest,
    DeleteVolumeRequest,
    ListSnapshotsRequest,
    ShowSnapshotRequest,
)
from huaweicloudsdkims.v2 import (
    GlanceCreateImageMetadataRequest,
    GlanceCreateImageMetadataRequestBody,
    GlanceDeleteImageRequest,
    GlanceShowImageRequest,
    GlanceUpdateImageRequest,
    GlanceUpdateImageRequestBody,
    UpdateImageRequest,
    UpdateImageRequestBody,
)
from sqlmodel import Session, func, select

from controller.cli.client import ApiCallError, ApiClient, Credentials
from controller.db import session_scope
from controller.models.common import utcnow
from controller.models.image import ACTIVE, DELETED, QUEUED, Image
from controller.models.job import Job
from controller.models.server import Server
from controller.services.server_rebuild import CHANGE_OS_JOB
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import create, make_net, server
from tests.controller.api.test_images import make_seed
from tests.controller.api.test_volumes import create_volume, evs_client, wait_evs_job


@pytest.fixture
def api_settings(tmp_path: Path) -> dict[str, Any]:
    return {"seed_image": make_seed(tmp_path / "seed")}


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "2G"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 2M", str(path)], check=True, capture_output=True
    )
    return path


def cli_client(api: Any) -> ApiClient:
    return ApiClient(Credentials(endpoint=api.endpoint, ak=api.ak, sk=api.sk, project_id=api.project_id))


def new_record(api: Any, name: str = "uploaded", **extra: Any) -> Any:
    body = GlanceCreateImageMetadataRequestBody(
        name=name, disk_format="qcow2", container_format="bare", **extra
    )
    return api.ims().glance_create_image_metadata(GlanceCreateImageMetadataRequest(body=body))


def upload(api: Any, image_id: str, data: bytes, checksum: str | None = None) -> None:
    headers = {"X-Image-Sha256": checksum} if checksum else None
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    with cli_client(api) as client:
        client.put_stream(f"/v2/images/{image_id}/file", chunks, size=len(data), headers=headers)


def row(api: Any, image_id: str) -> Image:
    with Session(api.ctx.engine) as session:
        image = session.get(Image, image_id)
    assert image is not None
    return image


def store_files(api: Any) -> list[str]:
    d = api.ctx.settings.image_dir
    return sorted(p.name for p in d.iterdir())


def test_upload_streams_the_file_into_the_store(api: Any, qcow2: Path) -> None:
    record = new_record(api, min_ram=64, tags=["a", "b"])
    assert (record.status, record.visibility, record.owner) == ("queued", "private", api.project_id)
    data = qcow2.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    upload(api, record.id, data, digest)
    shown = api.ims().glance_show_image(GlanceShowImageRequest(image_id=record.id))
    assert (shown.status, shown.checksum, shown.size) == ("active", digest, len(data))
    assert shown.min_disk == 2 and shown.min_ram == 64 and shown.tags == ["a", "b"]
    assert shown.data_origin == "upload"
    assert hashlib.sha256(Path(str(row(api, record.id).file_path)).read_bytes()).hexdigest() == digest
    # A second upload to an active image is refused.
    with pytest.raises(ApiCallError) as info:
        upload(api, record.id, data)
    assert (info.value.status, info.value.code) == (409, "IMG.0035")


@pytest.mark.parametrize(
    ("payload", "checksum", "reason"),
    [
        (b"not an image at all\n" * 50, None, "not a disk image"),
        (None, "0" * 64, "checksum mismatch"),
        (b"", None, "empty"),
    ],
)
def test_a_refused_upload_leaves_the_image_queued_and_the_store_clean(
    api: Any, qcow2: Path, payload: bytes | None, checksum: str | None, reason: str
) -> None:
    record = new_record(api)
    before = store_files(api)
    with pytest.raises(ApiCallError) as info:
        upload(api, record.id, qcow2.read_bytes() if payload is None else payload, checksum)
    assert (info.value.status, info.value.code) == (400, "IMG.0001")
    assert reason in str(info.value)
    assert row(api, record.id).status == QUEUED
    assert store_files(api) == before
    # The same record takes a good file afterwards.
    upload(api, record.id, qcow2.read_bytes())
    assert row(api, record.id).status == ACTIVE


def test_update_through_both_patch_apis(api: Any, qcow2: Path) -> None:
    record = new_record(api)
    upload(api, record.id, qcow2.read_bytes())
    ops = [
        UpdateImageRequestBody(op="replace", path="/name", value="renamed"),
        UpdateImageRequestBody(op="replace", path="/min_ram", value="512"),
        UpdateImageRequestBody(op="replace", path="/__os_version", value="Debian 12"),
    ]
    updated = api.ims().update_image(UpdateImageRequest(image_id=record.id, body=ops))
    assert (updated.name, updated.min_ram, updated.os_version) == ("renamed", 512, "Debian 12")
    glance_ops = [GlanceUpdateImageRequestBody(op="replace", path="/min_disk", value="4")]
    api.ims().glance_update_image(GlanceUpdateImageRequest(image_id=record.id, body=glance_ops))
    assert row(api, record.id).min_disk == 4

    # Smaller than the virtual size, unknown paths and bad values: 400, nothing changed.
    for bad, fragment in [
        (UpdateImageRequestBody(op="replace", path="/min_disk", value="1"), "virtual size"),
        (UpdateImageRequestBody(op="replace", path="/owner", value="x"), "Invalid path"),
        (UpdateImageRequestBody(op="replace", path="/min_ram", value="lots"), "whole number"),
    ]:
        exc = expect_error(
            lambda bad=bad: api.ims().update_image(UpdateImageRequest(image_id=record.id, body=[bad])),
            400,
            "IMG.0001",
        )
        assert fragment in exc.error_msg
    after = row(api, record.id)
    assert (after.name, after.min_disk, after.min_ram) == ("renamed", 4, 512)


def test_public_and_foreign_images_cannot_be_changed(api: Any) -> None:
    with Session(api.ctx.engine) as session:
        public = session.exec(select(Image).where(Image.visibility == "public")).one()
    op = [UpdateImageRequestBody(op="replace", path="/name", value="mine")]
    expect_error(
        lambda: api.ims().update_image(UpdateImageRequest(image_id=public.id, body=op)), 403, "IMG.0003"
    )
    expect_error(
        lambda: api.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=public.id)), 403, "IMG.0003"
    )
    mine = new_record(api)
    other = api.new_project("other")
    expect_error(
        lambda: other.ims().update_image(UpdateImageRequest(image_id=mine.id, body=op)), 404, "IMG.0027"
    )
    expect_error(
        lambda: other.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=mine.id)), 404, "IMG.0027"
    )
    expect_error(
        lambda: other.ims().glance_show_image(GlanceShowImageRequest(image_id=mine.id)), 404, "IMG.0027"
    )
    assert row(api, public.id).name != "mine" and row(api, mine.id).status == QUEUED


def test_delete_refuses_an_image_in_use_and_removes_the_file_otherwise(api: Any, qcow2: Path) -> None:
    record = new_record(api)
    upload(api, record.id, qcow2.read_bytes())
    path = Path(str(row(api, record.id).file_path))
    with session_scope(api.ctx.engine) as session:
        user = Server(
            project_id=api.project_id,
            name="user",
            flavor_id="s6.nano.1",
            image_id=record.id,
            availability_zone="lab-1a",
            vpc_id="v",
            root_volume_size=2,
            status="ACTIVE",
        )
        session.add(user)
    exc = expect_error(
        lambda: api.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=record.id)), 409, "IMG.0035"
    )
    assert user.id in exc.error_msg and "in use" in exc.error_msg
    assert row(api, record.id).status == ACTIVE and path.exists()

    with session_scope(api.ctx.engine) as session:
        gone = session.get(Server, user.id)
        assert gone is not None
        gone.status = "DELETED"
        session.add(gone)
    api.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=record.id))
    assert row(api, record.id).status == DELETED and not path.exists()
    expect_error(
        lambda: api.ims().glance_show_image(GlanceShowImageRequest(image_id=record.id)), 404, "IMG.0027"
    )


def test_delete_refuses_an_image_still_to_be_copied_into_volumes_or_a_new_root_disk(
    api: Any, qcow2: Path
) -> None:
    """A volume from `imageRef` is filled at its first attach, a snapshot of it before then holds only the
    image, and a change of OS in flight has yet to put its overlay on the image: none may lose the file."""
    record = new_record(api)
    upload(api, record.id, qcow2.read_bytes())
    path = Path(str(row(api, record.id).file_path))
    evs = evs_client(api)
    created = create_volume(evs, name="from-image", size=2, image_ref=record.id)
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    (volume_id,) = created.volume_ids
    option = CreateSnapshotOption(volume_id=volume_id, name="early")
    snapshot = evs.create_snapshot(CreateSnapshotRequest(body=CreateSnapshotRequestBody(snapshot=option)))
    snapshot_id = snapshot.snapshot.id

    def delete() -> Any:
        return api.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=record.id))

    exc = expect_error(delete, 409, "IMG.0035")
    assert volume_id in exc.error_msg and snapshot_id in exc.error_msg
    assert row(api, record.id).status == ACTIVE and path.exists()

    # The volume goes (its snapshot first), and a change of OS to the image starts: still refused.
    deadline = time.monotonic() + 60
    while evs.show_snapshot(ShowSnapshotRequest(snapshot_id=snapshot_id)).snapshot.status != "available":
        assert time.monotonic() < deadline, "the snapshot never became available"
        time.sleep(0.05)
    evs.delete_snapshot(DeleteSnapshotRequest(snapshot_id=snapshot_id))
    while evs.list_snapshots(ListSnapshotsRequest()).count:
        assert time.monotonic() < deadline, "the snapshot was never deleted"
        time.sleep(0.05)
    assert wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)).job_id).status == (
        "SUCCESS"
    )
    with session_scope(api.ctx.engine) as session:
        change = Job(
            project_id=api.project_id,
            kind=CHANGE_OS_JOB,
            status="RUNNING",
            payload={"server_id": "changing-server", "image_id": record.id},
        )
        session.add(change)
    exc = expect_error(delete, 409, "IMG.0035")
    assert "changing-server" in exc.error_msg and path.exists()

    with session_scope(api.ctx.engine) as session:
        ended = session.get(Job, change.id)
        assert ended is not None
        ended.status = "SUCCESS"
        session.add(ended)
    delete()
    assert row(api, record.id).status == DELETED and not path.exists()


def set_minimums(api: Any, image_id: str, *, min_ram: int, min_disk: int) -> None:
    with session_scope(api.ctx.engine) as session:
        image = session.get(Image, image_id)
        assert image is not None
        image.min_ram, image.min_disk = min_ram, min_disk
        session.add(image)


def server_count(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(Server)).one())


def test_min_ram_and_min_disk_are_enforced_at_server_create(api: Any) -> None:
    net = make_net(api)
    before = server_count(api)
    set_minimums(api, net.image_id, min_ram=4096, min_disk=1)
    exc = expect_error(lambda: create(api.ecs(), server(net)), 400, "Ecs.0005")
    assert "at least 4096 MiB" in exc.error_msg
    set_minimums(api, net.image_id, min_ram=64, min_disk=8)
    small = server(net, root_volume=PostPaidServerRootVolume(volumetype="SSD", size=4))
    exc = expect_error(lambda: create(api.ecs(), small), 400, "Ecs.0005")
    assert "8 GiB" in exc.error_msg
    assert server_count(api) == before


def test_an_upload_abandoned_by_a_dead_controller_can_be_taken_over(api: Any, qcow2: Path) -> None:
    record = new_record(api)
    with session_scope(api.ctx.engine) as session:
        image = session.get(Image, record.id)
        assert image is not None
        image.status, image.data_origin, image.updated_at = "saving", "upload", utcnow()
        session.add(image)
    # A live upload (recently touched) is not disturbed: no second upload, no delete.
    with pytest.raises(ApiCallError) as info:
        upload(api, record.id, qcow2.read_bytes())
    assert info.value.status == 409
    expect_error(
        lambda: api.ims().glance_delete_image(GlanceDeleteImageRequest(image_id=record.id)), 409, "IMG.0035"
    )
    with session_scope(api.ctx.engine) as session:
        image = session.get(Image, record.id)
        assert image is not None
        image.updated_at = utcnow() - timedelta(minutes=11)
        session.add(image)
    upload(api, record.id, qcow2.read_bytes())
    assert row(api, record.id).status == ACTIVE

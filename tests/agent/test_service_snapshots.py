"""Volume snapshots, rollback and volumes filled from a snapshot or an image in AgentService, over libvirt's test
driver with real qcow2 files. A running guest's volume is snapshotted through libvirt's backup job, which the
test driver lacks: that path is covered with a real guest in tests/e2e/test_snapshots.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import Conflict, NotFound, StorageError
from agent.schemas import ImageRef, SnapshotSpec, VolumeRollback, VolumeSource, VolumeSpec
from agent.storage.disks import image_info
from tests.agent.storage.conftest import make_qcow2, sha256_of
from tests.agent.storage.test_snapshots import holds_pattern, write_pattern
from tests.agent.test_service import Rig
from tests.agent.test_service_volumes import attachment, stopped_spec


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_snapshot_rollback_and_a_new_volume_from_the_snapshot(rig: Rig) -> None:
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    volume = rig.state / "volumes" / "vol-1.qcow2"
    write_pattern(volume, 0xAA)

    state = rig.service.create_snapshot(SnapshotSpec(id="snap-1", volume_id="vol-1"))
    assert (state.id, state.size_gib) == ("snap-1", 1)
    snapshot = rig.state / "snapshots" / "snap-1.qcow2"
    assert image_info(snapshot, fmt="qcow2").backing_file is None and holds_pattern(snapshot, 0xAA)
    write_pattern(volume, 0xBB)
    rig.service.create_snapshot(SnapshotSpec(id="snap-1", volume_id="vol-1"))  # a retry keeps the first copy
    assert holds_pattern(snapshot, 0xAA)

    # A grown volume keeps its size through a rollback, and gets the snapshot's data back.
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=2))
    source = VolumeSource(kind="snapshot", id="snap-1")
    assert rig.service.rollback_volume("vol-1", VolumeRollback(source=source)).size_gib == 2
    assert holds_pattern(volume, 0xAA)

    copy = rig.service.ensure_volume(VolumeSpec(id="vol-2", size_gib=3, source=source))
    assert copy.size_gib == 3 and holds_pattern(rig.state / "volumes" / "vol-2.qcow2", 0xAA)

    rig.service.delete_snapshot("snap-1")
    rig.service.delete_snapshot("snap-1")  # already gone: fine
    assert files(rig.state / "snapshots") == set()
    with pytest.raises(NotFound):
        rig.service.snapshot_state("snap-1")
    assert holds_pattern(rig.state / "volumes" / "vol-2.qcow2", 0xAA)  # the new volume stands alone


def test_a_volume_from_an_image_holds_the_image(rig: Rig, tmp_path: Path) -> None:
    base = make_qcow2(tmp_path / "patterned.qcow2", size="64M", pattern=0x77)
    image = ImageRef(id="img-2", checksum=sha256_of(base), url=base.as_uri())
    source = VolumeSource(kind="image", id=image.id, image=image)

    assert rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1, source=source)).size_gib == 1

    volume = rig.state / "volumes" / "vol-1.qcow2"
    assert image_info(volume, fmt="qcow2").backing_file is None  # a copy: the volume outlives the image
    assert holds_pattern(volume, 0x77)
    stale = source.model_copy(update={"image": image.model_copy(update={"checksum": "0" * 64})})
    with pytest.raises(StorageError):  # the image cache verifies what it fetched; nothing is made
        rig.service.ensure_volume(VolumeSpec(id="vol-x", size_gib=1, source=stale))
    assert files(rig.state / "volumes") == {"vol-1.qcow2"}


def test_snapshot_of_a_volume_attached_to_a_stopped_server(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    write_pattern(rig.state / "volumes" / "vol-1.qcow2", 0x3C)
    rig.service.attach_volume("srv-1", attachment())

    rig.service.create_snapshot(SnapshotSpec(id="snap-1", volume_id="vol-1"))

    assert holds_pattern(rig.state / "snapshots" / "snap-1.qcow2", 0x3C)
    # An attached volume cannot be rolled back: its data would change under the guest.
    with pytest.raises(Conflict, match="attached to server srv-1"):
        rig.service.rollback_volume(
            "vol-1", VolumeRollback(source=VolumeSource(kind="snapshot", id="snap-1"))
        )
    assert holds_pattern(rig.state / "volumes" / "vol-1.qcow2", 0x3C)


def test_missing_volumes_and_snapshots_are_not_found_and_make_nothing(rig: Rig) -> None:
    with pytest.raises(NotFound, match="volume vol-9"):
        rig.service.create_snapshot(SnapshotSpec(id="snap-1", volume_id="vol-9"))
    with pytest.raises(NotFound, match="snapshot snap-9"):
        rig.service.ensure_volume(
            VolumeSpec(id="vol-1", size_gib=1, source=VolumeSource(kind="snapshot", id="snap-9"))
        )
    rig.service.ensure_volume(VolumeSpec(id="vol-2", size_gib=1))
    with pytest.raises(NotFound, match="snapshot snap-9"):
        rig.service.rollback_volume(
            "vol-2", VolumeRollback(source=VolumeSource(kind="snapshot", id="snap-9"))
        )
    with pytest.raises(NotFound):
        rig.service.rollback_volume("vol-8", VolumeRollback())
    assert files(rig.state / "snapshots") == set()
    assert files(rig.state / "volumes") == {"vol-2.qcow2"}

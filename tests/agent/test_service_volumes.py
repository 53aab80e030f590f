"""Data volumes in AgentService over libvirt's test driver, with real qcow2 files.

The test driver cannot hot-plug, so attach and detach here act on a shut-off domain's persistent config; the
hot path is covered with a real guest in tests/e2e/test_volumes.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.errors import Conflict, NotFound, StorageError, VirtError
from agent.schemas import ImageRef, ServerAction, ServerSpec, VolumeAttachment, VolumeSpec
from agent.virt.domain_xml import disk_source, find_disk_device
from tests.agent.test_service import Rig, make_spec

GIB = 1024**3


def stopped_spec(image: ImageRef, server_id: str = "srv-1", n: int = 1) -> ServerSpec:
    return make_spec(image, server_id, n=n).model_copy(update={"power": "shutoff"})


def attachment(volume_id: str = "vol-1", device: str = "vdb") -> VolumeAttachment:
    return VolumeAttachment(volume_id=volume_id, device=device, serial=volume_id[:20])


def qemu_info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True, check=True
    ).stdout
    info: dict[str, object] = json.loads(out)
    return info


def config_disk(rig: Rig, server_id: str, target: str) -> str | None:
    return find_disk_device(rig.host.domain_xml(server_id, inactive=True), target)


def test_ensure_volume_makes_a_standalone_qcow2_once(rig: Rig) -> None:
    state = rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))

    path = rig.state / "volumes" / "vol-1.qcow2"
    info = qemu_info(path)
    assert (info["format"], info["virtual-size"], info.get("backing-filename")) == ("qcow2", GIB, None)
    assert (state.id, state.size_gib, state.server_id) == ("vol-1", 1, None)
    inode = path.stat().st_ino
    assert rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1)).size_gib == 1
    assert path.stat().st_ino == inode


def test_attach_to_a_stopped_server_goes_into_config_and_survives_start(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))

    rig.service.attach_volume("srv-1", attachment())
    rig.service.attach_volume("srv-1", attachment())  # idempotent

    disk = config_disk(rig, "srv-1", "vdb")
    assert disk is not None and disk_source(disk) == str(rig.state / "volumes/vol-1.qcow2")
    assert "<serial>vol-1</serial>" in disk
    assert rig.stored_spec("srv-1").volumes == [attachment()]
    assert rig.service.volume_state("vol-1").server_id == "srv-1"
    rig.service.server_action("srv-1", ServerAction(action="start"))
    assert find_disk_device(rig.host.domain_xml("srv-1"), "vdb") is not None


def test_detach_from_a_stopped_server_then_delete(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    rig.service.attach_volume("srv-1", attachment())
    with pytest.raises(Conflict):
        rig.service.delete_volume("vol-1")

    rig.service.detach_volume("srv-1", "vol-1")
    rig.service.detach_volume("srv-1", "vol-1")  # already done

    assert config_disk(rig, "srv-1", "vdb") is None
    assert rig.stored_spec("srv-1").volumes == []
    rig.service.delete_volume("vol-1")
    rig.service.delete_volume("vol-1")
    assert not (rig.state / "volumes/vol-1.qcow2").exists()
    with pytest.raises(NotFound):
        rig.service.volume_state("vol-1")


def test_conflicts_and_unknowns_change_nothing(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.ensure_server(stopped_spec(rig.image, "srv-2", n=2))
    for vid in ("vol-1", "vol-2"):
        rig.service.ensure_volume(VolumeSpec(id=vid, size_gib=1))
    rig.service.attach_volume("srv-1", attachment())

    with pytest.raises(Conflict):  # the device is taken by another volume
        rig.service.attach_volume("srv-1", attachment("vol-2", "vdb"))
    with pytest.raises(Conflict):  # the volume is already attached under another name
        rig.service.attach_volume("srv-1", attachment("vol-1", "vdc"))
    with pytest.raises(Conflict):  # the volume is on another server
        rig.service.attach_volume("srv-2", attachment("vol-1", "vdb"))
    with pytest.raises(NotFound):
        rig.service.attach_volume("srv-1", attachment("vol-9", "vdc"))
    with pytest.raises(NotFound):
        rig.service.attach_volume("srv-9", attachment("vol-2", "vdc"))

    assert rig.stored_spec("srv-1").volumes == [attachment()]
    assert rig.stored_spec("srv-2").volumes is None
    assert config_disk(rig, "srv-2", "vdb") is None


def test_a_failed_hot_plug_restores_the_spec(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image))  # running: the test driver cannot hot-plug
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))

    with pytest.raises(VirtError, match="attaching volume vol-1"):
        rig.service.attach_volume("srv-1", attachment())

    assert rig.stored_spec("srv-1").volumes is None
    assert rig.service.volume_state("vol-1").server_id is None


def test_a_redefined_domain_keeps_its_volumes(rig: Rig) -> None:
    spec = stopped_spec(rig.image)
    rig.service.ensure_server(spec)
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    rig.service.attach_volume("srv-1", attachment())
    rig.host.undefine("srv-1")  # the domain is lost; the stored spec remembers

    rig.service.ensure_server(spec)  # a controller that sends no volumes (None) keeps the host's

    assert config_disk(rig, "srv-1", "vdb") is not None
    assert rig.stored_spec("srv-1").volumes == [attachment()]


def test_deleting_the_server_keeps_the_volume(rig: Rig) -> None:
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    rig.service.attach_volume("srv-1", attachment())

    rig.service.delete_server("srv-1")

    assert (rig.state / "volumes/vol-1.qcow2").exists()
    assert rig.service.volume_state("vol-1").server_id is None


def test_ensure_volume_with_a_larger_size_grows_it_detached_or_on_a_stopped_server(rig: Rig) -> None:
    path = rig.state / "volumes" / "vol-1.qcow2"
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    assert rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=2)).size_gib == 2
    assert qemu_info(path)["virtual-size"] == 2 * GIB

    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.attach_volume("srv-1", attachment())
    state = rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=3))
    assert (state.size_gib, state.server_id) == (3, "srv-1")
    assert qemu_info(path)["virtual-size"] == 3 * GIB

    with pytest.raises(StorageError, match="shrink"):
        rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    assert qemu_info(path)["virtual-size"] == 3 * GIB

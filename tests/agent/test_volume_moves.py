"""Both halves of a volume move in AgentService (libvirt's test driver, real qcow2 files, a real HTTP server as
the source): the export links the detached volume's file, the fetch streams it in, checks it and replaces only
what it may. The whole move between two agents over HTTP is in tests/controller/api/test_volume_moves.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import Conflict, NotFound, StorageError
from agent.schemas import VolumeFetch, VolumeSpec
from agent.volume_moves import export_volume, fetch_volume
from tests.agent.storage.test_snapshots import holds_pattern, same_data, write_pattern
from tests.agent.test_service import Rig
from tests.agent.test_service_volumes import attachment, stopped_spec
from tests.support.fileserver import serve_directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_links_the_detached_volume_once(rig: Rig) -> None:
    with pytest.raises(NotFound):
        export_volume(rig.service, "vol-1", "move-vol-1")
    rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
    volume = rig.state / "volumes" / "vol-1.qcow2"
    write_pattern(volume, 0x11)

    export = export_volume(rig.service, "vol-1", "move-vol-1")
    linked = rig.state / "exports" / "move-vol-1.qcow2"
    assert linked.stat().st_ino == volume.stat().st_ino  # a link, not a copy
    assert (export.checksum, export.size, export.virtual_size) == (
        sha256(volume),
        volume.stat().st_size,
        1024**3,
    )
    assert export_volume(rig.service, "vol-1", "move-vol-1") == export  # a repeat changes nothing
    # With the export's own download token (what the fetching host gets instead of this agent's API token).
    assert sorted(p.name for p in (rig.state / "exports").iterdir()) == [
        "move-vol-1.qcow2",
        "move-vol-1.token",
    ]
    assert (rig.state / "exports" / "move-vol-1.token").read_text() == export.download_token

    # A volume a server on this host attaches cannot leave.
    rig.service.ensure_server(stopped_spec(rig.image))
    rig.service.attach_volume("srv-1", attachment())
    with pytest.raises(Conflict, match="srv-1"):
        export_volume(rig.service, "vol-1", "move-vol-1")


def test_fetch_replaces_a_stale_copy_and_keeps_a_good_one(rig: Rig, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    rig.service.ensure_volume(VolumeSpec(id="src", size_gib=1))
    good = source / "vol-1.qcow2"
    (rig.state / "volumes" / "src.qcow2").rename(good)
    write_pattern(good, 0x22)
    target = rig.state / "volumes" / "vol-1.qcow2"
    with serve_directory(source) as base:
        fetch = VolumeFetch(url=f"{base}/vol-1.qcow2", token="unused", checksum=sha256(good))
        # A stale copy (a clean-up that never happened) is replaced by the source's data.
        rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
        write_pattern(target, 0x99)
        assert fetch_volume(rig.service, "vol-1", fetch).size_gib == 1
        assert same_data(target, good) and holds_pattern(target, 0x22)
        inode = target.stat().st_ino
        fetch_volume(rig.service, "vol-1", fetch)  # a rerun keeps the verified copy
        assert target.stat().st_ino == inode

        # A download that does not hash as announced leaves the file as it was and no partial file.
        wrong = fetch.model_copy(update={"checksum": "f" * 64})
        target.unlink()
        with pytest.raises(StorageError, match="sha256"):
            fetch_volume(rig.service, "vol-1", wrong)
        assert not target.exists() and list((rig.state / "backups").iterdir()) == []

        # A volume a server here attaches is never replaced.
        rig.service.ensure_volume(VolumeSpec(id="vol-1", size_gib=1))
        rig.service.ensure_server(stopped_spec(rig.image))
        rig.service.attach_volume("srv-1", attachment("vol-1"))
        with pytest.raises(Conflict, match="srv-1"):
            fetch_volume(rig.service, "vol-1", fetch)
        assert not holds_pattern(target, 0x22)

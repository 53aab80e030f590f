"""`create_volume` with real qemu-img: size, idempotence, refusal to touch what is not a volume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.disks import create_volume, grow_volume
from agent.storage.layout import ensure_volumes_dir, volume_path

GIB = 1024**3


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_creates_a_standalone_qcow2_of_the_size(tmp_path: Path) -> None:
    ensure_volumes_dir(tmp_path)
    path = volume_path(tmp_path, "vol-1")

    create_volume(path, 2)

    assert path == tmp_path / "volumes" / "vol-1.qcow2"
    data = info(path)
    assert (data["format"], data["virtual-size"], data.get("backing-filename")) == ("qcow2", 2 * GIB, None)
    assert [p.name for p in path.parent.iterdir()] == ["vol-1.qcow2"]  # no temp file left


def test_an_existing_volume_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v.qcow2"
    create_volume(path, 1)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(path)], check=True, capture_output=True
    )
    before = path.read_bytes()

    create_volume(path, 1)

    assert path.read_bytes() == before


def test_refuses_an_overlay_or_a_foreign_file(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)], check=True
    )
    with pytest.raises(StorageError, match="not a standalone"):
        create_volume(overlay, 1)
    junk = tmp_path / "junk.qcow2"
    junk.write_text("not an image")
    with pytest.raises(StorageError):
        create_volume(junk, 1)
    assert junk.read_text() == "not an image"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_volume_ids_must_be_one_safe_component(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StorageError):
        volume_path(tmp_path, bad)


def test_grow_volume_grows_keeps_data_and_never_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "v.qcow2"
    create_volume(path, 1)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(path)], capture_output=True, check=True
    )

    assert grow_volume(path, 3) is True
    assert info(path)["virtual-size"] == 3 * GIB
    assert grow_volume(path, 3) is False  # already that size: nothing to do
    with pytest.raises(StorageError, match="refusing to shrink"):
        grow_volume(path, 2)
    assert info(path)["virtual-size"] == 3 * GIB
    check = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout

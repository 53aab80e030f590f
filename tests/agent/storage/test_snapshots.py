"""Snapshot copies and filled volumes with real qemu-img; the data is checked with qemu-io and qemu-img compare,
independently of the code under test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.disks import GIB, image_info
from agent.storage.snapshots import copy_volume, fill_volume
from tests.agent.storage.conftest import make_qcow2, run


def write_pattern(path: Path, byte: int, offset: int = 0, length: str = "1M") -> None:
    run("qemu-io", "-f", "qcow2", "-c", f"write -P {byte} {offset} {length}", path)


def holds_pattern(path: Path, byte: int, offset: int = 0, length: str = "1M") -> bool:
    proc = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"read -P {byte} {offset} {length}", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout


def same_data(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False).returncode == 0


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_copy_volume_is_a_standalone_copy_made_once(tmp_path: Path) -> None:
    volume = make_qcow2(tmp_path / "vol.qcow2", size="1G")
    write_pattern(volume, 0xAB)
    target = tmp_path / "snap.qcow2"

    assert copy_volume(volume, target) is True

    info = image_info(target, fmt="qcow2")
    assert (info.backing_file, info.virtual_size) == (None, GIB)
    assert same_data(volume, target)
    write_pattern(volume, 0xCD)  # the volume moves on; the snapshot keeps its instant
    assert holds_pattern(target, 0xAB) and holds_pattern(volume, 0xCD)
    inode = target.stat().st_ino
    assert copy_volume(volume, target) is False  # a retried call keeps the first copy
    assert target.stat().st_ino == inode and holds_pattern(target, 0xAB)
    assert leftovers(tmp_path) == []


def test_fill_volume_from_a_source_grows_it_to_the_volume_size(tmp_path: Path) -> None:
    source = make_qcow2(tmp_path / "src.qcow2", size="64M", pattern=0x5A)
    target = tmp_path / "new.qcow2"

    fill_volume(target, 2, source)

    info = image_info(target, fmt="qcow2")
    assert (info.backing_file, info.virtual_size) == (None, 2 * GIB)
    assert holds_pattern(target, 0x5A) and same_data(source, target)  # compare: the grown tail reads zero
    write_pattern(target, 0x11)
    fill_volume(target, 2, source)  # an existing volume is the user's: kept
    assert holds_pattern(target, 0x11)
    assert leftovers(tmp_path) == []


def test_fill_volume_from_a_raw_source(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x42" * (1024 * 1024))
    target = tmp_path / "new.qcow2"

    fill_volume(target, 1, raw, "raw")

    assert holds_pattern(target, 0x42)


def test_fill_volume_refuses_a_source_larger_than_the_volume(tmp_path: Path) -> None:
    source = make_qcow2(tmp_path / "big.qcow2", size="2G")
    target = tmp_path / "small.qcow2"

    with pytest.raises(StorageError, match="more than the 1 GiB"):
        fill_volume(target, 1, source)

    assert not target.exists() and leftovers(tmp_path) == []


def test_fill_volume_replace_swaps_the_data_in_one_step(tmp_path: Path) -> None:
    snapshot = make_qcow2(tmp_path / "snap.qcow2", size="1G", pattern=0x01)
    volume = make_qcow2(tmp_path / "vol.qcow2", size="1G", pattern=0x02)

    fill_volume(volume, 1, snapshot, replace=True)
    assert holds_pattern(volume, 0x01)

    fill_volume(volume, 1, None, replace=True)  # back to an empty volume
    assert holds_pattern(volume, 0x00)
    assert image_info(volume, fmt="qcow2").virtual_size == GIB
    assert leftovers(tmp_path) == []

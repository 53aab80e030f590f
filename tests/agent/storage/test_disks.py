from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.storage.disks import GIB, create_overlay, image_info, remove_disk

from .conftest import make_qcow2, run, sha256_of

PATTERN = 0xAB


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_qcow2(tmp_path / "base.qcow2", size="64M", pattern=PATTERN)


def qemu_io_reads(image: Path, pattern: int, length: str = "1M") -> bool:
    proc = subprocess.run(
        ["qemu-io", "-r", "-c", f"read -P 0x{pattern:x} 0 {length}", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout + proc.stderr


def test_overlay_reads_through_to_base(tmp_path: Path, base: Path) -> None:
    target = tmp_path / "inst" / "root.qcow2"
    target.parent.mkdir()
    create_overlay(base, target, 2)

    info = image_info(target)
    assert info.format == "qcow2"
    assert info.virtual_size == 2 * GIB
    assert info.backing_file == base
    assert info.backing_format == "qcow2"
    assert info.actual_size < 1024 * 1024  # an overlay, not a copy

    # Independent oracle: qemu-img's own view of the whole chain, and the data as QEMU reads it.
    chain = json.loads(run("qemu-img", "info", "--backing-chain", "--output=json", target))
    assert [Path(layer["filename"]) for layer in chain] == [target, base]
    assert qemu_io_reads(target, PATTERN)
    assert [p.name for p in target.parent.iterdir()] == ["root.qcow2"]  # no temp file left


def test_guest_writes_stay_in_overlay_and_survive_a_repeat(tmp_path: Path, base: Path) -> None:
    target = tmp_path / "root.qcow2"
    before = sha256_of(base)
    create_overlay(base, target, 1)
    run("qemu-io", "-c", "write -P 0xcd 0 64k", target)
    inode = target.stat().st_ino

    create_overlay(base, target, 1)  # idempotent: same backing file, keep the guest's data

    assert target.stat().st_ino == inode
    assert qemu_io_reads(target, 0xCD, "64k")
    assert sha256_of(base) == before
    assert not qemu_io_reads(base, 0xCD, "64k")  # the oracle can fail


def test_concurrent_creates_of_one_overlay_agree(tmp_path: Path, base: Path) -> None:
    target = tmp_path / "root.qcow2"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: create_overlay(base, target, 1), range(4)))
    assert image_info(target).backing_file == base
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_target_on_another_base_is_not_overwritten(tmp_path: Path, base: Path) -> None:
    other = make_qcow2(tmp_path / "other.qcow2", size="64M")
    target = tmp_path / "root.qcow2"
    create_overlay(other, target, 1)
    with pytest.raises(StorageError, match="backing file"):
        create_overlay(base, target, 1)
    assert image_info(target).backing_file == other


def test_refuses_to_shrink_below_the_base(tmp_path: Path) -> None:
    big = make_qcow2(tmp_path / "big.qcow2", size="2G")
    target = tmp_path / "root.qcow2"
    with pytest.raises(StorageError, match="shrink"):
        create_overlay(big, target, 1)
    assert not target.exists()
    create_overlay(big, target, 2)  # equal is fine
    assert image_info(target).virtual_size == 2 * GIB


def test_raw_base_gets_its_format_recorded(tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    raw.write_bytes(bytes([0x5A]) * 1024 * 1024)
    target = tmp_path / "root.qcow2"
    create_overlay(raw, target, 1, base_format="raw")
    info = image_info(target)
    assert info.backing_format == "raw"
    assert qemu_io_reads(target, 0x5A)


def test_base_with_its_own_backing_file_is_refused(tmp_path: Path, base: Path) -> None:
    middle = tmp_path / "middle.qcow2"
    create_overlay(base, middle, 1)
    with pytest.raises(StorageError, match="backing file"):
        create_overlay(middle, tmp_path / "root.qcow2", 1)


def test_base_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", crafted, "16M")
    assert image_info(crafted).data_file is not None
    with pytest.raises(StorageError, match="data file"):
        create_overlay(crafted, tmp_path / "root.qcow2", 1)


def test_missing_base_reports_qemu_img_stderr(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="Could not open") as err:
        create_overlay(tmp_path / "nope.qcow2", tmp_path / "root.qcow2", 1)
    assert "qemu-img info failed" in str(err.value)
    assert not (tmp_path / "root.qcow2").exists()


def test_image_info_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="No such file"):
        image_info(tmp_path / "missing.qcow2")


@pytest.fixture
def locked_overlay(tmp_path: Path, base: Path) -> Iterator[Path]:
    """An overlay held open read-write by a real QEMU process (qemu-io), as a running guest holds its disk."""
    target = tmp_path / "busy.qcow2"
    create_overlay(base, target, 1)
    holder = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Once qemu-io answers a command it has the image open and locked. (Polling with a locking
        # `qemu-img info` instead would race qemu-io's own lock at startup.)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(b"read 0 512\n")
        holder.stdin.flush()
        assert b"read 512/512 bytes" in holder.stdout.readline()
        yield target
    finally:
        holder.kill()
        holder.wait()


def test_image_info_works_on_an_image_in_use(locked_overlay: Path, base: Path) -> None:
    plain = subprocess.run(["qemu-img", "info", str(locked_overlay)], capture_output=True, text=True)
    assert plain.returncode != 0 and "lock" in plain.stderr  # really in use
    info = image_info(locked_overlay)
    assert info.backing_file == base
    remove_disk(locked_overlay)  # unlinking is allowed; the holder keeps its open file
    assert not locked_overlay.exists()


def test_remove_disk(tmp_path: Path, base: Path) -> None:
    target = tmp_path / "root.qcow2"
    create_overlay(base, target, 1)
    remove_disk(target)
    assert not target.exists()
    remove_disk(target)  # missing is fine


def test_overlay_creation_time_does_not_depend_on_base_size(tmp_path: Path) -> None:
    """Prints figures for the report; wall time is never asserted."""
    small = make_qcow2(tmp_path / "small.qcow2", size="64M", pattern=1, data_mib=1)
    large = make_qcow2(tmp_path / "large.qcow2", size="1G", pattern=2, data_mib=256)
    for base in (small, large):
        target = tmp_path / f"over-{base.stem}.qcow2"
        started = time.perf_counter()
        create_overlay(base, target, 4)
        elapsed = (time.perf_counter() - started) * 1000
        print(f"overlay on {base.name} ({base.stat().st_size // 1024} KiB on disk): {elapsed:.1f} ms")
        assert image_info(target).actual_size < 1024 * 1024

"""LibvirtHost.backup_disks against a real libvirtd and a real tinycloud guest (TCG) that keeps writing.

A user-data script loops: it writes counter N to the root disk (raw, past the image's partitions) and then to a
data volume, fsyncs both, and only then prints `tick N` on the serial console. So a copy taken after `tick N`
was printed holds a counter >= N on both disks, and copies from one point in time hold equal counters or the
root disk one ahead (the write in flight between the two). The copies are read with qemu-img, not by the code
under test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import Conflict, NotFound, VirtError
from agent.virt.domain_xml import DiskSpec, render_disk_device, render_domain, with_disk_device
from agent.virt.host import LibvirtHost

from .conftest import PrivateLibvirtd, tinycloud_guest

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

SERVER_ID = "bacc0000-1234-4abc-8def-0123456789ab"
ROOT_COUNTER_SECTOR = 1024 * 1024  # 512 MiB into the 1 GiB root disk: past tinycloud's 97 MiB of partitions
WAIT_S = 300  # generous: only bounds a hang, TCG on a busy machine is slow

WRITER = f"""#!/bin/sh
(
i=0
while :; do
    i=$((i + 1))
    printf 'counter %08d\\n' $i | dd of=/dev/vda bs=512 seek={ROOT_COUNTER_SECTOR} conv=notrunc,fsync 2>/dev/null
    printf 'counter %08d\\n' $i | dd of=/dev/vdb bs=512 conv=notrunc,fsync 2>/dev/null
    echo "tick $i" >/dev/ttyS0
    usleep 100000
done
) </dev/null >/dev/null 2>&1 &
"""


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def _counter(copy: Path, sector: int, scratch: Path) -> int:
    out = scratch / f"{copy.name}.sector"
    # qemu-img dd counts the skipped blocks in `count`.
    blocks = (f"skip={sector}", f"count={sector + 1}")
    _qemu_img("dd", "-f", "qcow2", "-O", "raw", "bs=512", *blocks, f"if={copy}", f"of={out}")
    match = re.match(rb"counter (\d{8})\n", out.read_bytes())
    assert match, f"no counter in {copy} at sector {sector}: {out.read_bytes()[:32]!r}"
    return int(match.group(1))


def _ticks(console: Path) -> int:
    found = re.findall(r"tick (\d+)", console.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def _wait_ticks(console: Path, above: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while (now := _ticks(console)) <= above:
        assert time.monotonic() < deadline, f"guest stopped ticking:\n{console.read_text()[-2000:]}"
        time.sleep(0.2)
    return now


@pytest.fixture
def writing_guest(libvirtd: PrivateLibvirtd) -> Iterator[tuple[LibvirtHost, Path]]:
    """A running tinycloud guest with a data volume on vdb, writing counters to both disks; yields its dir."""
    base = libvirtd.root / "instances" / "backup"
    base.mkdir(parents=True)
    base.chmod(0o755)
    volume = base / "vol.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(volume), "64M")
    spec = tinycloud_guest(base, SERVER_ID, "writer", WRITER, base / "console.log")
    xml = with_disk_device(render_domain(spec), render_disk_device(DiskSpec(source=volume, target="vdb")))
    host = LibvirtHost(libvirtd.uri, poll_interval=0.1)
    try:
        host.define(xml)
        host.start(SERVER_ID)
        yield host, base
    finally:
        host.close()
        libvirtd.remove_domains()
        shutil.rmtree(base, ignore_errors=True)


def test_backup_of_a_writing_guest_is_one_point_in_time(
    writing_guest: tuple[LibvirtHost, Path], tmp_path: Path
) -> None:
    host, base = writing_guest
    console = base / "console.log"
    copies = {"vda": base / "copy-vda.qcow2", "vdb": base / "copy-vdb.qcow2"}
    copies["vda"].write_bytes(b"stale leftover of an interrupted backup")
    seen: list[tuple[int, int]] = []

    before = _wait_ticks(console, 3)
    host.backup_disks(SERVER_ID, copies, progress=lambda done, total: seen.append((done, total)))

    root, vol = _counter(copies["vda"], ROOT_COUNTER_SECTOR, tmp_path), _counter(copies["vdb"], 0, tmp_path)
    assert root >= before and vol >= before  # what the guest wrote (and announced) before is in the copy
    assert root - vol in (0, 1), f"root disk at {root}, volume at {vol}: not one point in time"
    for target, copy in copies.items():
        info = json.loads(_qemu_img("info", "--output=json", str(copy)))
        assert info["format"] == "qcow2" and "backing-filename" not in info, info
        assert info["virtual-size"] == {"vda": 1 << 30, "vdb": 64 << 20}[target]
    assert seen and seen[-1][0] == seen[-1][1] > 0
    # The guest never stopped: it goes on ticking past what the copy holds.
    assert host.power_state(SERVER_ID) == "running"
    _wait_ticks(console, max(root, vol) + 2)

    # A second backup right after works (no job or lock left behind), and sees newer data.
    again = {"vdb": base / "again-vdb.qcow2"}
    host.backup_disks(SERVER_ID, again)
    assert _counter(again["vdb"], 0, tmp_path) > vol


def test_bad_backups_leave_nothing_behind(writing_guest: tuple[LibvirtHost, Path], tmp_path: Path) -> None:
    host, base = writing_guest
    before = sorted(p.name for p in base.iterdir())

    with pytest.raises(NotFound, match="vdz"):
        host.backup_disks(SERVER_ID, {"vda": base / "a.qcow2", "vdz": base / "z.qcow2"})
    with pytest.raises(Conflict, match="the disk itself"):
        host.backup_disks(SERVER_ID, {"vdb": base / "vol.qcow2"})
    with pytest.raises(NotFound):
        host.backup_disks("no-such-server", {"vda": base / "a.qcow2"})
    # libvirt cannot create the copy: the job is cleaned up and the other copy removed.
    with pytest.raises(VirtError):
        host.backup_disks(SERVER_ID, {"vda": base / "b.qcow2", "vdb": tmp_path / "missing" / "b.qcow2"})
    assert sorted(p.name for p in base.iterdir()) == before
    assert host.power_state(SERVER_ID) == "running"

    host.destroy(SERVER_ID)
    with pytest.raises(Conflict, match="not running"):
        host.backup_disks(SERVER_ID, {"vda": base / "c.qcow2"})
    assert sorted(p.name for p in base.iterdir()) == before

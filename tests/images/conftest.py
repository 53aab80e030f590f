"""Fixtures for the image tests: the tinycloud image, built by its own recipe (or taken from the cache), and
ways to look inside it without mounting anything (qemu-img, the MBR, debugfs, mtools)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "images" / "tinycloud"
BUILD_SH = RECIPE / "build.sh"
DEFAULT_CACHE = "/var/cache/labcloud/images"
SECTOR = 512


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    meta: dict[str, Any]


@dataclass(frozen=True)
class Partition:
    bootable: bool
    type: int
    start: int  # bytes
    size: int  # bytes


def run(*argv: str | os.PathLike[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def build_image(cache_dir: Path, **kwargs: Any) -> tuple[BuiltImage, subprocess.CompletedProcess[str]]:
    proc = run(BUILD_SH, "--cache-dir", cache_dir, **kwargs)
    path = Path(proc.stdout.splitlines()[-1])
    meta = json.loads(path.with_suffix(".json").read_text())
    return BuiltImage(path, meta), proc


def partitions(raw: Path) -> list[Partition]:
    """The four primary entries of an MBR (empty ones left out)."""
    with raw.open("rb") as f:
        mbr = f.read(SECTOR)
    assert mbr[510:512] == b"\x55\xaa", "no MBR boot signature"
    found = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        status, ptype, lba, sectors = entry[0], entry[4], *struct.unpack("<II", entry[8:16])
        if ptype:
            found.append(Partition(status == 0x80, ptype, lba * SECTOR, sectors * SECTOR))
    return found


def slice_file(src: Path, dest: Path, start: int, size: int) -> Path:
    with src.open("rb") as f, dest.open("wb") as out:
        f.seek(start)
        remaining = size
        while remaining:
            chunk = f.read(min(remaining, 1 << 20))
            assert chunk, "image shorter than its partition table says"
            out.write(chunk)
            remaining -= len(chunk)
    return dest


@dataclass(frozen=True)
class Unpacked:
    """The image converted to raw, with its two partitions as separate files."""

    raw: Path
    parts: list[Partition]
    boot: Path  # the FAT file system
    root: Path  # the ext4 file system

    def root_file(self, path: str, dest: Path) -> Path:
        run("debugfs", "-R", f"dump {path} {dest}", self.root)
        assert dest.exists(), f"{path} is not in the root file system"
        return dest

    def root_ls(self, path: str) -> dict[str, list[str]]:
        """A directory of the root file system: name -> the other `debugfs ls -l` columns."""
        out = run("debugfs", "-R", f"ls -l {path}", self.root).stdout
        return {line.split()[-1]: line.split()[:-1] for line in out.splitlines() if line.strip()}

    def root_exists(self, path: str) -> bool:
        return "Inode:" in run("debugfs", "-R", f"stat {path}", self.root).stdout


@pytest.fixture(scope="session")
def image_cache() -> Path:
    return Path(os.environ.get("LABCLOUD_IMAGE_CACHE", DEFAULT_CACHE))


@pytest.fixture(scope="session")
def tinycloud(image_cache: Path) -> BuiltImage:
    """The current tinycloud image: built on first use, then reused from `LABCLOUD_IMAGE_CACHE`."""
    image, _proc = build_image(image_cache)
    return image


@pytest.fixture(scope="session")
def unpacked(tinycloud: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Unpacked:
    work = tmp_path_factory.mktemp("unpacked")
    raw = work / "disk.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", tinycloud.path, raw)
    parts = partitions(raw)
    assert len(parts) == 2, parts
    boot = slice_file(raw, work / "boot.fat", parts[0].start, parts[0].size)
    root = slice_file(raw, work / "root.ext4", parts[1].start, parts[1].size)
    return Unpacked(raw, parts, boot, root)


@pytest.fixture(scope="session")
def guest_bin(unpacked: Unpacked, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the image's own busybox and a link per applet: guest scripts run on the host with
    exactly the shell and awk the guest has (busybox is static)."""
    bindir = tmp_path_factory.mktemp("guest-bin")
    busybox = unpacked.root_file("/bin/busybox", bindir / "busybox")
    busybox.chmod(0o755)
    for applet in run(busybox, "--list").stdout.split():
        link = bindir / applet
        if not link.exists():
            link.symlink_to("busybox")
    return bindir

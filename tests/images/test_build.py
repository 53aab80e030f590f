"""images/tinycloud/build.sh: what it produces (checked from the outside: MBR, FAT, ext4, initramfs, JSON) and
how it caches, locks, falls back to apt-get update, and builds without root."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.conftest import BUILD_SH, RECIPE, BuiltImage, Unpacked, build_image, run

MIB = 1024 * 1024
FAT16 = 0x06
LINUX = 0x83


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def listed(name: str) -> list[str]:
    lines = (RECIPE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_metadata_describes_the_file(tinycloud: BuiltImage) -> None:
    meta = tinycloud.meta
    assert tinycloud.path.is_absolute()
    assert tinycloud.path.name == f"tinycloud-{meta['key']}.qcow2"
    assert meta["name"] == "tinycloud"
    assert meta["sha256"] == sha256(tinycloud.path)
    assert meta["size"] == tinycloud.path.stat().st_size
    assert (meta["min_ram_mib"], meta["min_disk_gib"]) == (128, 1)
    info = json.loads(run("qemu-img", "info", "-U", "--output=json", tinycloud.path).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == meta["virtual_size"] == 97 * MIB
    assert "backing-filename" not in info  # self-contained
    packages = meta["packages"]
    assert set(listed("packages.list")) | {"linux-image-cloud-amd64"} < set(packages)
    assert packages[f"linux-image-{meta['kernel']}"] == packages["linux-image-cloud-amd64"]
    assert (tinycloud.path.stat().st_mode & 0o777) == 0o644  # qemu (libvirt-qemu) reads base images


def test_disk_is_mbr_with_syslinux_on_fat_and_an_ext4_root(unpacked: Unpacked, tmp_path: Path) -> None:
    boot, root = unpacked.parts
    assert (boot.bootable, boot.type, boot.start, boot.size) == (True, FAT16, MIB, 32 * MIB)
    assert (root.bootable, root.type, root.start, root.size) == (False, LINUX, 33 * MIB, 64 * MIB)
    with unpacked.raw.open("rb") as f:
        mbr_code = f.read(440)
    assert mbr_code == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]

    fat = run("mdir", "-a", "-b", "-i", unpacked.boot, "::/").stdout.split()
    assert {"::/vmlinuz", "::/initrd.img", "::/syslinux.cfg", "::/ldlinux.sys", "::/ldlinux.c32"} <= set(fat)
    cfg = run("mtype", "-i", unpacked.boot, "::/syslinux.cfg").stdout
    assert "root=LABEL=tinyroot" in cfg and "console=ttyS0,115200" in cfg

    stats = run("dumpe2fs", "-h", unpacked.root).stdout
    assert "Filesystem volume name:   tinyroot" in stats
    assert "has_journal" in stats and "extent" in stats  # ext4, not the ext2 busybox would make

    # Initramfs: stage-1 /init, busybox and the drivers it needs to reach the root disk.
    run("mcopy", "-i", unpacked.boot, "::/initrd.img", tmp_path / "initrd.img")
    cpio = gzip.decompress((tmp_path / "initrd.img").read_bytes())
    names = subprocess.run(
        ["cpio", "-t", "--quiet"], input=cpio, capture_output=True, check=True
    ).stdout.split()
    names = [name.decode() for name in names]
    assert {"init", "bin/busybox", "etc/modules.order", "usr/lib/tinycloud/modules.sh"} <= set(names)
    assert any(name.endswith("/virtio_blk.ko") for name in names)


def test_root_holds_busybox_dropbear_and_the_drivers(unpacked: Unpacked, tmp_path: Path) -> None:
    assert {"init", "udhcpc", "acpid", "getty", "findfs"} <= set(unpacked.root_ls("/sbin"))
    for path in ("/usr/sbin/dropbear", "/usr/sbin/chpasswd", "/etc/inittab", "/etc/init.d/rcS",
                 "/etc/acpi/PWRF/00000080", "/usr/share/udhcpc/default.script",
                 "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"):  # fmt: skip
        assert unpacked.root_exists(path), path

    # Every inode belongs to root, whoever built it; secrets and root's home are private.
    etc = unpacked.root_ls("/etc")
    assert all(columns[3:5] == ["0", "0"] for columns in etc.values())  # inode mode (links) uid gid ...
    assert etc["shadow"][1] == "100600"
    assert unpacked.root_ls("/")["root"][1] == "40700"

    order = unpacked.root_file("/etc/modules.order", tmp_path / "modules.order").read_text().split()
    loaded = [Path(path).name.removesuffix(".ko").replace("-", "_") for path in order]
    for module in listed("modules.list"):
        assert module.replace("-", "_") in loaded, module
    # Dependencies come first: virtio before virtio_pci, scsi_mod before sr_mod, cdrom before isofs.
    for dep, user in (
        ("virtio", "virtio_pci"),
        ("scsi_mod", "sr_mod"),
        ("cdrom", "isofs"),
        ("failover", "virtio_net"),
    ):
        assert loaded.index(dep) < loaded.index(user), (dep, user)
    release = unpacked.root_file("/etc/os-release", tmp_path / "os-release").read_text()
    assert "ID=tinycloud" in release


def fake_apt_get(tmp_path: Path, *, download_fails: bool) -> tuple[dict[str, str], Path]:
    """An apt-get in front of the real one that records its calls and can make `download` fail."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    calls = tmp_path / "apt-get.calls"
    real = shutil.which("apt-get")
    assert real
    fail = 'if [ "$1" = download ]; then exit 100; fi\n' if download_fails else ""
    (bindir / "apt-get").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\nif [ "$1" = update ]; then exit 0; fi\n{fail}exec {real} "$@"\n'
    )
    (bindir / "apt-get").chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}, calls


def test_cached_image_is_reused_without_downloading(tinycloud: BuiltImage, tmp_path: Path) -> None:
    env, calls = fake_apt_get(tmp_path, download_fails=True)
    mtime = tinycloud.path.stat().st_mtime_ns
    again, proc = build_image(tinycloud.path.parent, env=env)
    assert again.path == tinycloud.path
    assert proc.stdout.splitlines() == [str(tinycloud.path)]  # stdout carries only the result
    assert "cached" in proc.stderr
    assert tinycloud.path.stat().st_mtime_ns == mtime
    assert not calls.exists()  # apt-get was not even called


@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get update needs root")
def test_failed_download_runs_apt_get_update_once(tmp_path: Path) -> None:
    env, calls = fake_apt_get(tmp_path, download_fails=True)
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [BUILD_SH, "--cache-dir", cache], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "apt-get download failed after apt-get update" in proc.stderr
    verbs = [line.split()[0] for line in calls.read_text().splitlines()]
    assert verbs == ["download", "update", "download"]
    assert [p.name for p in cache.iterdir()] == [".tinycloud.lock"]  # the failed build left nothing else


def test_leftovers_of_a_killed_build_are_removed(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stale = cache / ".tinycloud-build.dead01"
    stale.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="tinycloud-build.", dir="/dev/shm"))
    try:
        (stale / "scratch").write_text(f"{scratch}\n")
        (scratch / "x").write_text("unpacked packages")
        env, _calls = fake_apt_get(tmp_path, download_fails=True)  # stops the build right after the cleanup
        subprocess.run([BUILD_SH, "--cache-dir", cache], env=env, capture_output=True, check=False)
        assert not stale.exists()
        assert not scratch.exists()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_concurrent_builds_make_one_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [BUILD_SH, "--cache-dir", cache], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _out, err in results]
    paths = {out.splitlines()[-1] for out, _err in results}
    assert len(paths) == 1
    built = [err for _out, err in results if "tinycloud: built /" in err]
    assert len(built) == 1, "exactly one of them builds; the other waits on the lock and reuses it"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".tinycloud.lock", Path(*paths).name, Path(*paths).with_suffix(".json").name]
    )
    meta = json.loads(Path(*paths).with_suffix(".json").read_text())
    assert meta["sha256"] == sha256(Path(*paths))


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A directory `nobody` owns, outside pytest's private (0700) temporary tree."""
    home = Path(tempfile.mkdtemp(prefix="lctest-img-nobody-"))
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the build as nobody")
def test_build_needs_no_root(nobody_home: Path, tmp_path: Path) -> None:
    home = nobody_home
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", f"HOME={home}"]
    proc = subprocess.run(
        [*argv, BUILD_SH, "--cache-dir", home / "cache"],
        capture_output=True,
        text=True,
        check=False,
        cwd=home,
    )
    assert proc.returncode == 0, proc.stderr
    image = Path(proc.stdout.splitlines()[-1])
    assert image.stat().st_uid == 65534
    root = tmp_path / "root.ext4"
    raw = tmp_path / "disk.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, raw)
    with raw.open("rb") as f, root.open("wb") as out:
        f.seek(33 * MIB)
        out.write(f.read(64 * MIB))
    listing = run("debugfs", "-R", "ls -l /etc", root).stdout
    owners = {tuple(line.split()[3:5]) for line in listing.splitlines() if line.strip()}
    assert owners == {("0", "0")}  # mkfs.ext4 -d copied the builder's ids; build.sh gave them back to root

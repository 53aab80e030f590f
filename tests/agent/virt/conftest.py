"""Fixtures for the virt tests: golden-file regeneration, a fresh libvirt test-driver node per test, and a
private libvirtd in a test network namespace for the tests that run real (firmware-only) QEMU guests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.schemas import ImageRef, ServerSpec
from agent.virt.designer import design_domain
from agent.virt.domain_xml import DomainSpec
from agent.virt.host import LibvirtHost

# A small host for libvirt's test driver. Each test gets its own file, so no state leaks between tests
# (test:///default would share one node across the whole process).
_NODE_XML = """\
<node>
  <cpu>
    <nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
    <mhz>2000</mhz><model>x86_64</model>
  </cpu>
  <memory>8388608</memory>
</node>
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/agent/virt/golden/*.xml from the current renderer instead of comparing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture
def node_capacity() -> tuple[int, int]:
    """(vCPUs, MiB) of the node in `test_uri`."""
    return 4, 8192


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A libvirt test-driver URI backed by a fresh node.xml."""
    node = tmp_path / "node.xml"
    node.write_text(_NODE_XML)
    return f"test://{node}"


@pytest.fixture
def test_host(test_uri: str) -> Iterator[LibvirtHost]:
    host = LibvirtHost(test_uri, poll_interval=0.01)
    yield host
    host.close()


# -- a private libvirtd in a test network namespace ----------------------------------------------------------


@dataclass
class PrivateLibvirtd:
    """One simulated hypervisor host: a libvirtd (and its qemus and taps) inside a network namespace."""

    netns: str
    root: Path  # stands in for /run/libvirt, /var/lib/libvirt, ... and /etc/libvirt inside the netns

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.root}/run/libvirt-sock"

    def virsh(self, *args: str) -> str:
        return _run("virsh", "-c", self.uri, *args)

    def ip(self, *args: str) -> str:
        return _run("ip", "-n", self.netns, *args)

    def start(self) -> None:
        mounts = " && ".join(
            f"mount --bind {self.root / sub} {target}"
            for sub, target in (
                ("run", "/run/libvirt"),
                ("lib", "/var/lib/libvirt"),
                ("cache", "/var/cache/libvirt"),
                ("log", "/var/log/libvirt"),
                ("etc", "/etc/libvirt"),
            )
        )
        # `ip netns exec` gives the command a private mount namespace: the bind mounts never reach the host.
        _run(
            "ip",
            "netns",
            "exec",
            self.netns,
            "sh",
            "-c",
            f"{mounts} && exec libvirtd -d --pid-file {self.pidfile}",
        )
        _wait_for(lambda: (self.root / "run" / "libvirt-sock").exists(), what="libvirtd socket")

    def stop(self) -> None:
        """SIGTERM the daemon we started (by its pid file) and wait for it to go."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        _signal_and_wait(pid)
        self.pidfile.unlink(missing_ok=True)
        (self.root / "run" / "libvirt-sock").unlink(missing_ok=True)

    @property
    def pidfile(self) -> Path:
        return self.root / "libvirtd.pid"

    def remove_domains(self) -> None:
        for name in self.virsh("list", "--all", "--name").split():
            subprocess.run(["virsh", "-c", self.uri, "destroy", name], capture_output=True, check=False)
            subprocess.run(["virsh", "-c", self.uri, "undefine", name], capture_output=True, check=False)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


def _wait_for(check: Callable[[], bool], *, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _signal_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    if os.geteuid() != 0 or not (shutil.which("libvirtd") and shutil.which("virsh") and shutil.which("ip")):
        pytest.skip("needs root, libvirtd, virsh and ip")
    netns = f"lctest-virt-{secrets.token_hex(3)}"
    # /tmp, not pytest's 0700 tmp dir: qemu runs as libvirt-qemu and must reach the disk and log files.
    root = Path(tempfile.mkdtemp(prefix=f"{netns}-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("run", "lib", "cache", "log", "etc"):
        (root / sub).mkdir()
    (root / "etc" / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{root}/run"\nunix_sock_rw_perms = "0700"\nauth_unix_ro = "none"\n'
        f'auth_unix_rw = "none"\nlog_outputs = "3:file:{root}/libvirtd.log"\n'
    )
    # No virtlogd here, hence stdio_handler. qemu runs as root: /dev/kvm here is root-only 0600 (no udev),
    # yet libvirt's capability probe sees KVM, so as libvirt-qemu every API call re-probes QEMU (~4 s each).
    (root / "etc" / "qemu.conf").write_text('stdio_handler = "file"\nuser = "root"\ngroup = "root"\n')
    daemon = PrivateLibvirtd(netns=netns, root=root)
    _run("ip", "netns", "add", netns)
    try:
        daemon.ip("link", "set", "lo", "up")
        daemon.start()
        yield daemon
    finally:
        if daemon.pidfile.exists():
            with contextlib.suppress(AssertionError):
                daemon.remove_domains()
        daemon.stop()
        # Anything still in the namespace was started by this daemon (a qemu it lost track of): end it.
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            _signal_and_wait(int(pid))
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def tinycloud_image() -> Path | None:
    """The project's small guest image if it was built (images/tinycloud/build.sh); tests skip without it."""
    explicit = os.environ.get("LABCLOUD_TINYCLOUD_IMAGE")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("LABCLOUD_IMAGE_CACHE", "/var/cache/labcloud/images"))
    images = sorted(cache.glob("tinycloud-*.qcow2"), key=lambda p: p.stat().st_mtime)
    return images[-1] if images else None


def tinycloud_guest(base: Path, server_id: str, name: str, user_data: str, console_log: Path) -> DomainSpec:
    """A tinycloud guest without NICs in `base`: a 1 GiB overlay on the built image and a NoCloud seed with
    `user_data`; returns its domain spec (skips the test when the image was not built)."""
    base_image = tinycloud_image()
    if base_image is None:
        pytest.skip("no tinycloud image: run images/tinycloud/build.sh")
    root_disk, seed = base / "root.qcow2", base / "seed.iso"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(base_image),
            str(root_disk),
            "1G",
        ],
        check=True,
    )
    (base / "meta-data").write_text(f"instance-id: {server_id}\nlocal-hostname: {name}\n")
    (base / "user-data").write_text(user_data)
    files = [str(base / "meta-data"), str(base / "user-data")]
    subprocess.run(["genisoimage", "-quiet", "-o", str(seed), "-V", "cidata", "-J", "-r", *files], check=True)
    server = ServerSpec(
        id=server_id,
        name=name,
        hostname=name,
        project_id="proj-e2e",
        vcpus=1,
        ram_mib=128,
        root_disk_gib=1,
        image=ImageRef(id="tinycloud", checksum="0" * 64, url="http://unused"),
        ports=[],
        networks=[],
    )
    return design_domain(
        server,
        accelerator="tcg",
        root_disk=root_disk,
        seed=seed,
        console_log=console_log,
        nic_names=lambda _p: ("", ""),
    )

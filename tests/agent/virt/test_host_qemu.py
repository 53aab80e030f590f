"""LibvirtHost against a real libvirtd and real QEMU (TCG) inside a test network namespace.

The guest is firmware only: an empty root disk, so SeaBIOS finds nothing to boot and, like a hung or
uncooperative OS, ignores the ACPI power button: exactly the case the shutdown and reboot fallbacks are for.
`virsh` on the same daemon is the independent oracle (domain ids, states, resets).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import VirtError
from agent.schemas import ImageRef, NetworkSpec, PortSpec, ServerSpec, SubnetSpec
from agent.virt.designer import design_domain
from agent.virt.domain_xml import render_domain
from agent.virt.host import LibvirtHost

from .conftest import PrivateLibvirtd, tinycloud_guest

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

SERVER_ID = "c0ffee00-1234-4abc-8def-0123456789ab"
BRIDGE = "lcbvirttest"
TAP = "lctvirttest"
MARKER = "console output from an earlier boot\n"
JOIN_TIMEOUT = 300  # generous: only bounds a hang, TCG on a busy machine is slow


@pytest.fixture
def real_host(libvirtd: PrivateLibvirtd) -> Iterator[LibvirtHost]:
    host = LibvirtHost(libvirtd.uri, poll_interval=0.1)
    try:
        yield host
    finally:
        host.close()
        libvirtd.remove_domains()


@pytest.fixture
def guest_xml(libvirtd: PrivateLibvirtd) -> Iterator[str]:
    """The designer's XML for a 96 MiB TCG guest with an empty disk, a seed ISO and one NIC on a bridge."""
    base = libvirtd.root / "instances" / SERVER_ID
    base.mkdir(parents=True)
    base.chmod(0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base / "root.qcow2"), "16M"], check=True)
    (base / "meta-data").write_text(f"instance-id: {SERVER_ID}\nlocal-hostname: fw\n")
    subprocess.run(
        [
            "genisoimage",
            "-quiet",
            "-o",
            str(base / "seed.iso"),
            "-V",
            "cidata",
            "-J",
            "-r",
            str(base / "meta-data"),
        ],
        check=True,
    )
    (base / "console.log").write_text(MARKER)
    libvirtd.ip("link", "add", BRIDGE, "type", "bridge")
    libvirtd.ip("link", "set", BRIDGE, "up")
    server = ServerSpec(
        id=SERVER_ID,
        name="fw",
        hostname="fw",
        project_id="proj-e2e",
        vcpus=1,
        ram_mib=96,
        root_disk_gib=1,
        image=ImageRef(id="none", checksum="0" * 64, url="http://unused"),
        ports=[PortSpec(id="port-1", mac="fa:16:3e:12:34:56", ip="10.9.0.5", subnet_id="sn", vpc_id="vpc")],
        networks=[
            NetworkSpec(
                vpc_id="vpc",
                vni=9,
                cidr="10.9.0.0/16",
                subnets=[SubnetSpec(id="sn", cidr="10.9.0.0/24", gateway_ip="10.9.0.1", mtu=1450)],
            )
        ],
    )
    spec = design_domain(
        server,
        accelerator="tcg",
        root_disk=base / "root.qcow2",
        seed=base / "seed.iso",
        console_log=base / "console.log",
        nic_names=lambda _port: (BRIDGE, TAP),
    )
    try:
        yield render_domain(spec)
    finally:
        libvirtd.remove_domains()
        subprocess.run(["ip", "-n", libvirtd.netns, "link", "del", BRIDGE], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _domid(libvirtd: PrivateLibvirtd) -> str:
    return libvirtd.virsh("domid", f"lc-{SERVER_ID}").strip()


def _state(libvirtd: PrivateLibvirtd) -> str:
    return libvirtd.virsh("domstate", f"lc-{SERVER_ID}").strip()


def _in_thread(
    target: object, *args: object, **kwargs: object
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args, **kwargs)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_designed_guest_really_runs(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    assert _state(libvirtd) == "running"
    assert real_host.list_servers() == {SERVER_ID: "running"}

    # The tap libvirt made carries the designer's name and MTU and sits on the bridge, inside the namespace.
    link = libvirtd.ip("-d", "link", "show", TAP)
    assert f"master {BRIDGE}" in link and "mtu 1450" in link
    live = ET.fromstring(real_host.domain_xml(SERVER_ID))
    assert live.find("devices/disk[@device='cdrom']/target").get("dev") == "hdc"  # type: ignore[union-attr]

    # Serial output is appended, so a restart does not wipe what earlier boots printed.
    real_host.destroy(SERVER_ID)
    real_host.start(SERVER_ID)
    console = Path(live.find("devices/serial/source").get("path"))  # type: ignore[union-attr, arg-type]
    assert console.read_text().startswith(MARKER)

    vcpus, memory_mib = real_host.capacity()
    node = libvirtd.virsh("nodeinfo")
    assert f"CPU(s):              {vcpus}\n" in node
    node_kib = int(node.split("Memory size:")[1].split()[0])
    assert memory_mib == node_kib // 1024

    real_host.undefine(SERVER_ID)
    assert real_host.power_state(SERVER_ID) == "missing"
    assert TAP not in libvirtd.ip("-br", "link")


def test_shutdown_ignored_by_the_guest_ends_in_destroy(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    real_host.shutdown(SERVER_ID, timeout=2)
    assert _state(libvirtd) == "shut off"
    assert real_host.power_state(SERVER_ID) == "shutoff"


def test_shutdown_wait_leaves_the_connection_free(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    waiter, errors = _in_thread(real_host.shutdown, SERVER_ID, timeout=3600)
    # While the shutdown waits for the guest, other calls on the same host go through.
    assert real_host.power_state(SERVER_ID) == "running"
    assert real_host.list_servers() == {SERVER_ID: "running"}
    assert waiter.is_alive()
    real_host.destroy(SERVER_ID)  # the waiting shutdown sees the domain off and returns
    waiter.join(JOIN_TIMEOUT)
    assert not waiter.is_alive() and errors == []
    assert _state(libvirtd) == "shut off"


def test_soft_reboot_ignored_by_the_guest_power_cycles(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    before = _domid(libvirtd)
    real_host.reboot(SERVER_ID, hard=False, timeout=2)
    assert _state(libvirtd) == "running"
    assert _domid(libvirtd) != before  # a new QEMU process: destroy + start


def test_soft_reboot_is_confirmed_by_the_guest_reset(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str, caplog: pytest.LogCaptureFixture
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    before = _domid(libvirtd)
    waiting = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ACPI reboot requested" in record.getMessage():
                waiting.set()

    handler = Watch()
    logging.getLogger("agent.virt.host").addHandler(handler)
    try:
        caplog.set_level(logging.INFO, logger="agent.virt.host")
        rebooter, errors = _in_thread(real_host.reboot, SERVER_ID, hard=False, timeout=3600)
        assert waiting.wait(JOIN_TIMEOUT)
        # Stand in for a cooperative guest: the reset it would cause is what the reboot waits for.
        libvirtd.virsh("reset", f"lc-{SERVER_ID}")
        rebooter.join(JOIN_TIMEOUT)
    finally:
        logging.getLogger("agent.virt.host").removeHandler(handler)
    assert not rebooter.is_alive() and errors == []
    assert "guest rebooted" in caplog.text
    assert _domid(libvirtd) == before  # same QEMU process: no power cycle was needed


def test_hard_reboot_resets_in_place(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    before = _domid(libvirtd)
    real_host.reboot(SERVER_ID, hard=True)
    assert _state(libvirtd) == "running"
    assert _domid(libvirtd) == before


def test_survives_a_libvirtd_restart(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, guest_xml: str
) -> None:
    real_host.define(guest_xml)
    real_host.start(SERVER_ID)
    libvirtd.stop()
    with pytest.raises(VirtError):  # no daemon: a typed error, not a libvirt one
        real_host.power_state(SERVER_ID)
    libvirtd.start()
    # The old connection is dead; the host notices, reconnects and finds the guest still running.
    assert real_host.power_state(SERVER_ID) == "running"
    real_host.destroy(SERVER_ID)
    assert _state(libvirtd) == "shut off"


def _wait_for_boots(console: Path, count: int) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while console.read_text(errors="replace").count("tinycloud: ready") < count:
        assert time.monotonic() < deadline, (
            f"guest did not finish boot {count}:\n{console.read_text()[-2000:]}"
        )
        time.sleep(0.5)


def test_cooperative_guest_reboots_and_shuts_down_through_acpi(
    real_host: LibvirtHost, libvirtd: PrivateLibvirtd, caplog: pytest.LogCaptureFixture
) -> None:
    """A guest that handles the ACPI power button: no fallback may be needed for either verb."""
    base = libvirtd.root / "instances" / "tiny"
    base.mkdir(parents=True)
    console = base / "console.log"
    spec = tinycloud_guest(base, SERVER_ID, "tiny", "#cloud-config\n", console)
    caplog.set_level(logging.INFO, logger="agent.virt.host")
    try:
        real_host.define(render_domain(spec))
        real_host.start(SERVER_ID)
        _wait_for_boots(console, 1)
        before = _domid(libvirtd)

        real_host.reboot(SERVER_ID, hard=False, timeout=JOIN_TIMEOUT)
        assert "guest rebooted" in caplog.text and "ignored ACPI reboot" not in caplog.text
        assert _domid(libvirtd) == before  # libvirt reset the same QEMU once the guest had shut down
        _wait_for_boots(console, 2)

        real_host.shutdown(SERVER_ID, timeout=JOIN_TIMEOUT)
        assert "shut down by the guest" in caplog.text and "ignored ACPI shutdown" not in caplog.text
        assert _state(libvirtd) == "shut off"
    finally:
        libvirtd.remove_domains()
        shutil.rmtree(base, ignore_errors=True)

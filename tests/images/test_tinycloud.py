"""The tinycloud image, booted for real: a TCG guest under a private libvirtd in a test network namespace, fed
a NoCloud seed (two SSH keys, a hostname, a password, a multipart user-data with a shell script), reached over
SSH from a client namespace, rebooted, and shut down with the ACPI power button."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import libvirt
import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.images.conftest import BuiltImage, partitions, run, slice_file
from tests.images.lab import Lab, exec_ok, wait_for

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

HOSTNAME = "tiny-e2e"
MAC = "52:54:00:6c:01:32"
PASSWORD = 'Pa55 w:rd"\\x'  # a space, a colon, a quote and a backslash: YAML escaping and chpasswd splitting
BOOT_TIMEOUT = 240  # generous: TCG on a busy 2-core machine


def new_key() -> tuple[paramiko.Ed25519Key, str]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), public.decode()


def yaml_str(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax)."""
    return json.dumps(value)


def make_seed(workdir: Path, *, meta_key: str, config_key: str) -> Path:
    meta = f"instance-id: i-tinye2e01\nlocal-hostname: {HOSTNAME}\npublic-keys:\n  - {yaml_str(meta_key)}\n"
    config = (
        "#cloud-config\n"
        "ssh_authorized_keys:\n"
        f"  - {config_key}\n"
        f"password: {yaml_str(PASSWORD)}\n"
        "chpasswd:\n"
        "  expire: false\n"
        "runcmd:\n"
        "  - echo runcmd-ran > /root/runcmd-ran\n"
    )
    script = (
        "#!/bin/sh\n"
        'echo "script ran as $(id -u) on $(hostname)" > /root/user-data-ran\n'
        "ip route show default >> /root/user-data-ran\n"
        "echo script-output\n"
    )
    user_data = MIMEMultipart("mixed")
    user_data.attach(MIMEText(config, "cloud-config", "us-ascii"))
    user_data.attach(MIMEText(script, "x-shellscript", "us-ascii"))
    # Present to show it does no harm: tinycloud takes its network from DHCP.
    network_config = f"version: 2\nethernets:\n  eth0:\n    match: {{macaddress: '{MAC}'}}\n    dhcp4: true\n"
    seed_dir = workdir / "seed"
    seed_dir.mkdir()
    (seed_dir / "meta-data").write_text(meta)
    (seed_dir / "user-data").write_text(user_data.as_string())
    (seed_dir / "network-config").write_text(network_config)
    iso = workdir / "seed.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock",
         "meta-data", "user-data", "network-config"],
        cwd=seed_dir, check=True,
    )  # fmt: skip
    return iso


def domain_xml(*, name: str, disk: Path, seed: Path, bridge: str, tap: str, console: Path) -> str:
    """GUEST.md §5, built with ElementTree (the project's renderer lives in agent/virt)."""
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "128"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(ET.SubElement(features, "tcg"), "tb-cache", unit="MiB").text = "32"
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    root = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(root, "driver", name="qemu", type="qcow2")
    ET.SubElement(root, "source", file=str(disk))
    ET.SubElement(root, "target", dev="vda", bus="virtio")
    cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
    ET.SubElement(cdrom, "driver", name="qemu", type="raw")
    ET.SubElement(cdrom, "source", file=str(seed))
    ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
    ET.SubElement(cdrom, "readonly")
    nic = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(nic, "source", bridge=bridge)
    ET.SubElement(nic, "mac", address=MAC)
    ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(nic, "target", dev=tap)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console))
    ET.SubElement(serial, "target", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


@pytest.fixture
def lab() -> Iterator[Lab]:
    # Not tmp_path: pytest's base directory is 0700 and qemu (libvirt-qemu) must reach the disks.
    with Lab(Path(tempfile.mkdtemp(prefix="lctest-img-"))) as the_lab:
        yield the_lab


def boot_id(client: paramiko.SSHClient) -> str:
    return exec_ok(client, "cat /proc/sys/kernel/random/boot_id").strip()


def test_tinycloud_boots_takes_its_seed_reboots_and_powers_off(tinycloud: BuiltImage, lab: Lab) -> None:
    key_a, pub_a = new_key()
    key_b, pub_b = new_key()
    ip = f"{lab.subnet.prefix}.50"
    lab.add_dhcp_host(MAC, ip, HOSTNAME)

    work = lab.workdir / "vm"
    work.mkdir()
    work.chmod(0o755)
    # A private copy as the backing file: libvirt's dynamic ownership chowns backing files to libvirt-qemu,
    # and the cached image is shared (hard-linked) by other users of the cache.
    base = work / "base.qcow2"
    shutil.copyfile(tinycloud.path, base)
    base.chmod(0o644)
    disk = work / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk, "1G"],
        check=True,
    )
    seed = make_seed(work, meta_key=pub_a, config_key=pub_b)
    console = work / "console.log"
    console.touch()
    xml = domain_xml(
        name=f"lctest-{lab.tag}-vm",
        disk=disk,
        seed=seed,
        bridge=lab.bridge,
        tap=f"tap-{lab.tag}",
        console=console,
    )
    dom = lab.conn.defineXML(xml)

    def alive() -> None:
        state = dom.info()[0]
        assert state == libvirt.VIR_DOMAIN_RUNNING, f"guest stopped (state {state}):\n{console.read_text()}"

    started = time.monotonic()
    dom.create()
    try:
        client = lab.wait_ssh(ip, pkey=key_a, timeout=BOOT_TIMEOUT, alive=alive)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- console ---\n{console.read_text()}") from exc
    boot_to_ssh = time.monotonic() - started
    log.info("boot -> SSH (key from meta-data): %.1f s", boot_to_ssh)

    with client:
        assert exec_ok(client, "hostname").strip() == HOSTNAME
        assert exec_ok(client, "cat /sys/class/net/eth0/mtu").strip() == str(lab.subnet.mtu)
        assert f"nameserver {lab.subnet.dns}" in exec_ok(client, "cat /etc/resolv.conf")
        route = exec_ok(client, "ip -4 route show default").split()
        assert route[:3] == ["default", "via", lab.subnet.gateway]
        applets = "nc wget sha256sum mke2fs mount udhcpc acpid"
        assert exec_ok(client, f"for a in {applets}; do command -v $a >/dev/null || echo $a; done") == ""
        assert {"vda", "sr0"} <= set(exec_ok(client, "ls /sys/block").split())

        # User-data runs after SSH is up (as with cloud-init): wait for rc.final to finish.
        wait_for(lambda: "boot-finished" in exec_ok(client, "ls /run/tinycloud/"), 120, "boot-finished")
        ran = exec_ok(client, "cat /root/user-data-ran")
        assert f"script ran as 0 on {HOSTNAME}" in ran
        assert f"default via {lab.subnet.gateway}" in ran  # the network was up when it ran
        assert exec_ok(client, "cat /root/runcmd-ran").strip() == "runcmd-ran"
        user_log = exec_ok(client, "cat /var/log/user-data.log")
        assert "script-output" in user_log
        assert user_log.count("exited with status 0") == 2  # the shell script part and runcmd
        first_boot = boot_id(client)
        # No explicit sync: the clean reboot path must flush it.
        exec_ok(client, f"echo {first_boot} > /root/persist")

    assert f"tinycloud: ready ip={ip} hostname={HOSTNAME}" in console.read_text()

    with lab.ssh(ip, pkey=key_b) as client:  # the key from cloud-config works too
        assert exec_ok(client, "id -u").strip() == "0"
    with lab.ssh(ip, password=PASSWORD) as client:  # dropbear password login as root
        assert exec_ok(client, "cat /etc/hostname").strip() == HOSTNAME

    # reboot from inside: <on_reboot>restart</on_reboot> brings it back with the same disk.
    with lab.ssh(ip, pkey=key_a) as client:
        # Detached, so the SSH session can end cleanly before the shutdown stops dropbear.
        exec_ok(client, "setsid sh -c 'sleep 1; reboot' </dev/null >/dev/null 2>&1 &")
    rebooted = time.monotonic()

    def new_boot() -> paramiko.SSHClient:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            client = lab.wait_ssh(ip, pkey=key_a, timeout=BOOT_TIMEOUT, alive=alive)
            try:
                if boot_id(client) != first_boot:
                    return client
            except (OSError, EOFError, paramiko.SSHException):
                pass  # reached the old boot while it was going down
            client.close()
            time.sleep(1)
        raise AssertionError(f"no new boot within {BOOT_TIMEOUT} s\n{console.read_text()}")

    with new_boot() as client:
        log.info("reboot -> SSH: %.1f s", time.monotonic() - rebooted)
        assert exec_ok(client, "cat /root/persist").strip() == first_boot
        assert exec_ok(client, "hostname").strip() == HOSTNAME
        wait_for(lambda: "boot-finished" in exec_ok(client, "ls /run/tinycloud/"), 120, "boot-finished")
        # Scripts run once per instance-id, not once per boot.
        assert exec_ok(client, "cat /var/log/user-data.log").count("exited with status 0") == 2

    # virsh shutdown = the ACPI power button; acpid turns it into a clean poweroff.
    shutdown = time.monotonic()
    dom.shutdown()
    wait_for(lambda: dom.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF, 60, "ACPI shutdown")
    log.info("virsh shutdown -> shut off: %.1f s", time.monotonic() - shutdown)
    assert "tinycloud: stopping" in console.read_text()
    # The root file system was left clean (unmounted or read-only), not merely journaled.
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, raw], check=True)
    root = partitions(raw)[1]
    stats = run("dumpe2fs", "-h", slice_file(raw, work / "root.ext4", root.start, root.size)).stdout
    assert "Filesystem state:         clean" in stats
    assert "needs_recovery" not in stats

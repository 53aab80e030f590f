"""Create → ACTIVE and create → SSH-ready through labcloud, against raw libvirt doing the same work.

Runs a namespace-contained cloud (`labcloud up` in a fresh network namespace), then, in the same process and on
the same private libvirtd:
  * labcloud: N sequential creates with the official Huawei SDK; time from the create call to status ACTIVE
    (polled every 20 ms) and to the first SSH login (polled every 100 ms);
  * raw: `qemu-img create` of an overlay on the same cached base + `virsh define` + `virsh start` of the same
    domain XML (taken from a labcloud server, renamed, on a plain bridge with a static dnsmasq lease), then boot to
    SSH with no labcloud in the path.
Prints the medians, the ratios and the idle RSS of controller + agent; the last line is one JSON object.

    .venv/bin/python -m bench.create --runs 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from tests.e2e import journey
from tests.support import netns
from tests.support.cloud import Cloud, start_cloud
from tests.support.keys import write_keypair

RAW_BRIDGE, RAW_GATEWAY, RAW_IP, RAW_MAC = "rawbr0", "10.250.0.1", "10.250.0.10", "52:54:00:fa:00:10"


def _poll(check: Callable[[], bool], interval: float, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def _ssh_works(ns: str, ip: str, key: paramiko.PKey) -> bool:
    try:
        with netns.entered(ns):
            sock = socket.create_connection((ip, 22), timeout=1.0)
    except OSError:
        return False
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            ip,
            username="root",
            pkey=key,
            sock=sock,
            timeout=3,
            banner_timeout=3,
            auth_timeout=3,
            allow_agent=False,
            look_for_keys=False,
        )
        _, out, _ = client.exec_command("true", timeout=10)
        return out.channel.recv_exit_status() == 0
    except (OSError, paramiko.SSHException, EOFError):
        return False
    finally:
        client.close()
        sock.close()


def _new_key(workdir: Path) -> tuple[str, paramiko.PKey]:
    public, path = write_keypair(workdir / "id_ed25519")
    return public, paramiko.PKey.from_path(str(path))


def _virsh(cloud: Cloud, *argv: str) -> str:
    uri = f"qemu:///system?socket={cloud.home}/libvirt/run/libvirt-sock"
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv], check=True, capture_output=True, text=True
    ).stdout


@@LAB@@


def _raw_domain_xml(template: str, name: str, disk: Path, seed: Path, console: Path) -> str:
    """The labcloud domain, renamed and moved onto the raw bridge: the same devices, no labcloud in the path."""
    root = ET.fromstring(template)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for tag in ("metadata", "seclabel"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    assert devices is not None
    for d in devices.findall("disk"):
        target = d.find("target").get("dev")  # type: ignore[union-attr]
        source = d.find("source")
        assert source is not None
        source.set("file", str(disk if target == "vda" else seed))
        for backing in d.findall("backingStore"):
            d.remove(backing)
    for serial in devices.findall("serial") + devices.findall("console"):
        src = serial.find("source")
        if src is not None and src.get("path"):
            src.set("path", str(console))
    for iface in devices.findall("interface"):
        iface.find("source").set("bridge", RAW_BRIDGE)  # type: ignore[union-attr]
        iface.find("mac").set("address", RAW_MAC)  # type: ignore[union-attr]
        target = iface.find("target")
        if target is not None:
            target.set("dev", "rawtap0")
        for tag in ("alias", "address"):
            for el in iface.findall(tag):
                iface.remove(el)
    return ET.tostring(root, encoding="unicode")


@@RAW@@


def idle_rss_mib(cloud: Cloud) -> dict[str, float]:
    rss: dict[str, float] = {}
    for name in ("controller", "agent"):
        pid = int((Path(cloud.home) / "run" / f"{name}.pid").read_text().split()[0])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss[name] = int(line.split()[1]) / 1024
    return rss


@@MAIN@@


if __name__ == "__main__":
    main()
